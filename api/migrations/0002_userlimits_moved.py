"""UserLimits moved to the imagesite app (imagesite 0001 takes over the same table)."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("api", "0001_initial"), ("imagesite", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(database_operations=[], state_operations=[migrations.DeleteModel(name="UserLimits")]),
    ]
