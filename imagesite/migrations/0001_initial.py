"""UserLimits moved from the api app: the table exists already (api 0001), only the state moves."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("api", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="UserLimits",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("generations_per_hour", models.PositiveIntegerField(blank=True, null=True)),
                        ("uploads_per_hour", models.PositiveIntegerField(blank=True, help_text="Photos uploaded per hour.", null=True)),
                        ("trainings_per_day", models.PositiveIntegerField(blank=True, null=True)),
                        ("max_queued_jobs", models.PositiveIntegerField(blank=True, help_text="Queued or running jobs at once.", null=True)),
                        ("user", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="api_limits", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={"verbose_name": "user limits", "verbose_name_plural": "user limits", "db_table": "api_userlimits"},
                ),
            ],
        ),
    ]
