"""GeneratedImage.owner, a copy of its generation's owner (issue 18; 0010 makes it required and adds
the indexes: apart, so PostgreSQL never alters a table with the copy's deferred FK checks pending)."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def copy_owners(apps, schema_editor) -> None:
    # One UPDATE for every image, whatever their number.
    GeneratedImage = apps.get_model("generation", "GeneratedImage")
    Generation = apps.get_model("generation", "Generation")
    GeneratedImage.objects.update(owner_id=Subquery(Generation.objects.filter(pk=OuterRef("generation_id")).values("owner_id")[:1]))


class Migration(migrations.Migration):

    dependencies = [
        ("generation", "0008_studio_inputs_and_prompt_files"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="generatedimage",
            name="owner",
            field=models.ForeignKey(editable=False, null=True, on_delete=django.db.models.deletion.CASCADE,
                                    related_name="generated_images", to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunPython(copy_owners, migrations.RunPython.noop),
    ]
