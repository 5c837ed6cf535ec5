from django.db import migrations


def seed(apps, schema_editor):
    from datasets_app.distillation.engine.pricing import DEFAULT_PRICES

    TeacherPrice = apps.get_model("datasets_app", "TeacherPrice")
    for model, (price_in, price_out) in DEFAULT_PRICES.items():
        TeacherPrice.objects.get_or_create(model=model, defaults={"input_per_mtok": price_in, "output_per_mtok": price_out})


class Migration(migrations.Migration):
    dependencies = [("datasets_app", "0005_distillation")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
