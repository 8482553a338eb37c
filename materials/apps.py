from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MaterialsConfig(AppConfig):
    """The material library: reusable, versioned and approved messages, personalised per person."""

    name = "materials"
    verbose_name = _("Materials")
    role_permissions = {
        # Operations write materials and their drafts; only a lead approves a version for sending.
        "Operations": [
            "materials.add_material",
            "materials.change_material",
            "materials.view_material",
            "materials.add_materialversion",
            "materials.change_materialversion",
            "materials.view_materialversion",
        ],
        "Operations lead": ["materials.*"],
        "Analyst": ["materials.view_*"],
    }
