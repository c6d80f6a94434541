from django.apps import AppConfig


class CitiesConfig(AppConfig):
    name = "cities"
    default_auto_field = "django.db.models.BigAutoField"
