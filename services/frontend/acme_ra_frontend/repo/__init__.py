"""The frontend's SQL, one module per resource: one function per read or state change.

Handlers call these functions and never see a dialect: where PostgreSQL does in one statement what
SQLite does in several (``acme_ra.db.fast.Statement`` runs them on asyncpg), the choice is made here.
"""
