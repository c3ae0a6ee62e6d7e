"""The (owner, newest first) indexes that serve the gallery, the API image list and the generations
list as keyset pages (issue 18); every image has its owner now (0009)."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("generation", "0009_image_owner"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="generatedimage",
            name="owner",
            field=models.ForeignKey(editable=False, on_delete=django.db.models.deletion.CASCADE,
                                    related_name="generated_images", to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddIndex(
            model_name="generatedimage",
            index=models.Index(fields=["owner", "-created_at", "-id"], name="image_owner_newest"),
        ),
        migrations.AddIndex(
            model_name="generation",
            index=models.Index(fields=["owner", "-created_at", "-id"], name="generation_owner_newest"),
        ),
    ]
