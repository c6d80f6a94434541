"""The city lookup's table (the schema of ``examples/flask_city/schema.py``) and a visit counter
the write view bumps inside ``atomic()``."""

from django.db import models


class City(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=64, unique=True)

    class Meta:
        db_table = "city"


class Visit(models.Model):
    city = models.OneToOneField(City, on_delete=models.CASCADE, primary_key=True)
    n = models.IntegerField(default=0)

    class Meta:
        db_table = "city_visit"
