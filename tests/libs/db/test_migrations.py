"""The migrations build exactly the schema the models describe (the lane's database): a column or
table added to models.py without its migration, or the other way round, fails here."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from acme_ra.db.migrate import upgrade
from acme_ra.db.models import Base
from tests.support import database


async def differences(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
    finally:
        await engine.dispose()


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    with database.fresh_database(tmp_path / "db") as url:
        upgrade(url)
        found = asyncio.run(differences(url))
    assert found == [], found
