"""Deployments now live in deployments_app (its 0001 renamed the tables and took over the state):
drop the three models from adapters_app's state only; the database keeps every row."""
from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("adapters_app", "0004_arm_api_key"),
        ("deployments_app", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            # requests point at arms and deployments, arms at deployments: delete in that order
            state_operations=[
                migrations.DeleteModel(name="DeploymentRequest"),
                migrations.DeleteModel(name="DeploymentArm"),
                migrations.DeleteModel(name="Deployment"),
            ],
            database_operations=[],
        ),
    ]
