"""Pagination of the console's lists: ``?page=N&rows=R``; links to the previous and next page keep
the list's filters. A page asks for one row more than it shows, so it knows whether there is a
next page without counting the table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar
from urllib.parse import urlencode

# Rows per page a console list offers (the first is the default).
ROWS_CHOICES = (100, 25, 50, 200)
# The highest page number accepted (a deeper page is an offset scan: search instead).
MAX_PAGE = 10_000

T = TypeVar("T")


@dataclasses.dataclass
class Pager:
    page: int
    rows: int
    # The list's filters, kept in the links (empty values left out).
    query: dict[str, str]
    has_next: bool = False

    @classmethod
    def of(cls, page: str, rows: str, query: dict[str, str]) -> Pager:
        """From the request's ``page`` and ``rows`` (anything unusable: the first page, the default rows)."""
        number = int(page) if page.isascii() and page.isdigit() and 0 < int(page) <= MAX_PAGE else 1
        size = int(rows) if rows.isascii() and rows.isdigit() and int(rows) in ROWS_CHOICES else ROWS_CHOICES[0]
        return cls(number, size, {k: v for k, v in query.items() if v})

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.rows

    @property
    def fetch(self) -> int:
        """Rows to ask for: one more than a page, to know whether a next page exists."""
        return self.rows + 1

    def cut(self, found: Sequence[T]) -> list[T]:
        """The page's rows of what ``fetch`` returned; remembers whether there was more."""
        self.has_next = len(found) > self.rows
        return list(found[:self.rows])

    def link(self, page: int) -> str:
        query = dict(self.query)
        if self.rows != ROWS_CHOICES[0]:
            query["rows"] = str(self.rows)
        if page > 1:
            query["page"] = str(page)
        return "?" + urlencode(query) if query else "?"

    @property
    def previous(self) -> str | None:
        return self.link(self.page - 1) if self.page > 1 else None

    @property
    def next(self) -> str | None:
        return self.link(self.page + 1) if self.has_next else None
