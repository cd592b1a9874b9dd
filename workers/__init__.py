"""pgfleet's Celery workers. ``celery -A workers worker -Q embed.gpu`` runs one."""

from workers.app import app

__all__ = ["app"]
