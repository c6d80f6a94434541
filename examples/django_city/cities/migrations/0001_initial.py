from django.db import migrations, models

CITIES = ("london", "paris", "berlin", "madrid", "rome", "vienna", "lisbon", "dublin")


def seed(apps, schema_editor):
    City = apps.get_model("cities", "City")
    for i, name in enumerate(CITIES, start=1):
        City.objects.get_or_create(id=i, defaults={"name": name})


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 - Django's own layout

    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="City",
            fields=[
                ("id", models.IntegerField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=64, unique=True)),
            ],
            options={"db_table": "city"},
        ),
        migrations.CreateModel(
            name="Visit",
            fields=[
                (
                    "city",
                    models.OneToOneField(
                        on_delete=models.deletion.CASCADE,
                        primary_key=True,
                        serialize=False,
                        to="cities.city",
                    ),
                ),
                ("n", models.IntegerField(default=0)),
            ],
            options={"db_table": "city_visit"},
        ),
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
