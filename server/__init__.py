"""MesoScan's REST gateway and job workers: scans as durable Celery jobs behind a Flask API."""
