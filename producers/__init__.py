"""Producers: LISTEN for pending work and publish it as Celery messages."""
