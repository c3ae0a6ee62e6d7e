"""Photos are processed by a worker: a status (existing photos were processed in the request, so
they are ready), a rejection reason, the raw upload until processed, and attempt bookkeeping."""
import django.utils.timezone
from django.db import migrations, models

import training.models


class Migration(migrations.Migration):

    dependencies = [
        ("training", "0003_first_step_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="subjectphoto",
            name="status",
            field=models.CharField(choices=[("pending", "Processing…"), ("ready", "Ready"), ("rejected", "Rejected")], default="ready", max_length=10),
        ),
        # New rows start pending; only the rows above become ready.
        migrations.AlterField(
            model_name="subjectphoto",
            name="status",
            field=models.CharField(choices=[("pending", "Processing…"), ("ready", "Ready"), ("rejected", "Rejected")], default="pending", max_length=10),
        ),
        migrations.AddField(
            model_name="subjectphoto",
            name="reason",
            field=models.TextField(blank=True, help_text="Why the photo was rejected, for the person who uploaded it."),
        ),
        migrations.AddField(
            model_name="subjectphoto",
            name="upload",
            field=models.FileField(blank=True, help_text="The raw upload, until processed.", max_length=255, upload_to=training.models._upload_path),
        ),
        migrations.AddField(
            model_name="subjectphoto",
            name="attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="subjectphoto",
            name="queued_at",
            field=models.DateTimeField(default=django.utils.timezone.now, help_text="When its processing task was last queued."),
        ),
        migrations.AlterField(
            model_name="subjectphoto",
            name="image",
            field=models.FileField(blank=True, max_length=255, upload_to=training.models._photo_path),
        ),
        migrations.AlterField(
            model_name="subjectphoto",
            name="crop",
            field=models.FileField(blank=True, max_length=255, upload_to=training.models._crop_path),
        ),
    ]
