"""Factories for materials and their versions."""

from __future__ import annotations

import factory
from django.utils import timezone

from materials.models import Material, MaterialChannel, MaterialVersion, VersionStatus


class MaterialFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Material

    name = factory.Sequence(lambda n: f"material {n}")
    channel = MaterialChannel.PUSH
    tags = factory.LazyFunction(lambda: ["welcome"])


class MaterialVersionFactory(factory.django.DjangoModelFactory):
    """A draft; `approved=True` makes it an approved one."""

    class Meta:
        model = MaterialVersion

    class Params:
        approved = factory.Trait(status=VersionStatus.APPROVED, approved_at=factory.LazyFunction(timezone.now))

    material = factory.SubFactory(MaterialFactory)
    number = factory.Sequence(lambda n: n + 1)
    title = "Hi {{ name }}"
    body = "Your city: {{ city }}"
    url = "https://shop.example.com/welcome"
    defaults = factory.LazyFunction(lambda: {"name": "friend", "city": "your city"})
