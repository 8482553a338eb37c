"""Writes config/model_labels.py: the labels Django derives from our models' and fields' names,
as gettext_noop() lines for makemessages (see config/labels.py). Run it after adding a model or a
field without a verbose_name, then makemessages in config/."""

from django.core.management.base import BaseCommand

from config.labels import MODULE_PATH, derived_labels, module_source


class Command(BaseCommand):
    help = "Write config/model_labels.py, the derived model and field labels for translation."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--check", action="store_true", help="Exit 1 if the module is out of date.")

    def handle(self, *args, check: bool = False, **options) -> None:
        source = module_source()
        current = MODULE_PATH.read_text() if MODULE_PATH.exists() else ""
        if check:
            if current != source:
                self.stderr.write(f"{MODULE_PATH} is out of date: run manage.py model_labels")
                raise SystemExit(1)
            return
        MODULE_PATH.write_text(source)
        self.stdout.write(f"{MODULE_PATH}: {len(derived_labels())} labels")
