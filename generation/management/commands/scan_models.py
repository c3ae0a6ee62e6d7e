"""`manage.py scan_models`: offer what is in the models folder (IMAGESITE_MODELS_DIR) and IMAGESITE_MODEL
now, without waiting for the next page that lists them."""
from django.conf import settings
from django.core.management.base import BaseCommand
from django.template.defaultfilters import filesizeformat

from generation.catalog import scan_models
from generation.models import BaseModel


class Command(BaseCommand):
    help = "Scan the models folder and IMAGESITE_MODEL into the base models users may pick."

    def handle(self, *args, **options) -> None:
        report = scan_models()
        self.stdout.write(f"Models folder: {settings.IMAGESITE_MODELS_DIR}\n{report}")
        for row in BaseModel.objects.order_by("-is_default", "name"):
            state = "default" if row.is_default else ("offered" if row.is_offered else ("disabled" if not row.enabled else "not usable"))
            line = f"  {row.pk:>3}  {row.name}  [{row.family_label or '?'}]  {filesizeformat(row.size_bytes)}  {state}"
            self.stdout.write(line + (f": {row.problem}" if row.problem else ""))
