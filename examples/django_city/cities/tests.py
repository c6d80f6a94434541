"""Run by ``manage.py test``: Django's test runner creates the test database through the
backend, runs these, and drops it."""

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import City, Visit


class CityTests(TestCase):
    def test_seeded_by_the_migration(self) -> None:
        self.assertEqual(City.objects.get(name="london").id, 1)
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))

    def test_lookup_view(self) -> None:
        self.assertEqual(self.client.get("/city?name=paris").json(), {"id": 2})
        self.assertEqual(self.client.get("/city?name=atlantis").status_code, 404)


class AtomicTests(TransactionTestCase):
    serialized_rollback = True

    def test_rolled_back_on_error(self) -> None:
        london = City.objects.get(name="london")
        with self.assertRaises(ZeroDivisionError), transaction.atomic():
            Visit.objects.create(city=london, n=5)
            raise ZeroDivisionError
        self.assertFalse(Visit.objects.filter(city=london).exists())
        self.assertEqual(self.client.get("/visit?name=london").json(), {"n": 1})
