"""Alembic, run from Python: the migrations live in migrations/ inside the package and are applied on open."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine, revision: str = "head") -> None:
    """Migrate the database to `revision` inside one transaction (PostgreSQL runs DDL transactionally)."""
    with engine.begin() as conn:
        command.upgrade(config(conn), revision)


def current(engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
