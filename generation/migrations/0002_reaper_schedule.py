"""Formerly made the stale-job reaper's schedule; imagesite.apps makes it after every migrate now
(imagesite.jobs.ensure_reaper_schedule), where a reader looks for it. Kept as a no-op so the
migration graph stays as deployed databases know it."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("generation", "0001_initial"), ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]
    operations = []
