"""Read the pizza-place data set: one year of a pizza restaurant's orders.

``order_lines.csv`` has one row per order line, with this header::

    pizza_id,order_id,pizza_name_id,quantity,order_date,order_time,unit_price,pizza_size

Every detail of the format below was checked against the published file, and
the importer accepts exactly this format and rejects anything else with the
line number:

- The rows of one order are consecutive, and order ids rise with time.
- Dates are day first in two spellings. ``D/M/YYYY`` without leading zeros
  is used for days 1 to 12 (``7/3/2015`` is 7 March) and ``DD-MM-YYYY`` for
  days 13 to 31 (``21-03-2015``). Read month first, the slash dates would make
  some orders earlier than orders with lower ids. A slash date with a day
  above 12, or a dash date with a day up to 12, is rejected: neither occurs in
  the data, and accepting them would make the spelling ambiguous again.
- Times are ``HH:MM:SS`` on a 24-hour clock, with no time zone.
- Prices use a decimal comma with at most two decimals (``"13,25"``, quoted
  because of the comma) or are whole numbers (``16``).
- ``pizza_size`` is one of S, M, L, XL, XXL, and ``pizza_name_id`` is the
  pizza type id, ``_`` and the size in lower case (``hawaiian_m``).

``pizza_types.csv`` (``pizza_type_id,pizza_name,pizza_category,
pizza_ingredients``) gives each type's display name and category.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .errors import ConfigurationError, OrderflowError
from .models import Item

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

__all__ = [
    "DATA_DIR_VARIABLE",
    "ORDER_LINE_COLUMNS",
    "PIZZA_SIZES",
    "PIZZA_TYPE_COLUMNS",
    "ImportFormatError",
    "PizzaOrder",
    "default_data_dir",
    "read_pizza_orders",
    "slice_by_days",
]

logger = logging.getLogger(__name__)

DATA_DIR_VARIABLE = "ORDERFLOW_PIZZA_DATA"

ORDER_LINE_COLUMNS = (
    "pizza_id",
    "order_id",
    "pizza_name_id",
    "quantity",
    "order_date",
    "order_time",
    "unit_price",
    "pizza_size",
)
PIZZA_TYPE_COLUMNS = ("pizza_type_id", "pizza_name", "pizza_category", "pizza_ingredients")
PIZZA_SIZES = ("S", "M", "L", "XL", "XXL")

_SLASH_DATE = re.compile(r"([1-9]|1[0-2])/([1-9]|1[0-2])/([0-9]{4})")
_DASH_DATE = re.compile(r"(1[3-9]|2[0-9]|3[01])-(0[1-9]|1[0-2])-([0-9]{4})")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})")
_PRICE = re.compile(r"[0-9]{1,9}(?:,[0-9]{1,2})?")

# At most 18 digits keeps ids and quantities within a signed 64-bit integer,
# the widest integer column of SQLite and PostgreSQL.
_MAX_DIGITS = 18

_DATE_EXPECTED = (
    "Expected D/M/YYYY for days 1 to 12, like 7/3/2015, "
    "or DD-MM-YYYY for days 13 to 31, like 21-03-2015."
)
_TIME_EXPECTED = "Expected HH:MM:SS on a 24-hour clock, like 09:05:30."
_PRICE_EXPECTED = (
    "Expected a price above 0 with a decimal comma and at most two decimals, like 13,25 or 16."
)


class ImportFormatError(OrderflowError, ValueError):
    """A row of an input file that does not match the expected format.

    ``path`` is the file, ``line`` the 1-based physical line where the row
    starts (the header is line 1) and ``field`` the column name. ``field`` is
    None when the header or the row as a whole is wrong: too many columns, a
    blank line, broken quoting or bytes that are not UTF-8.
    """

    def __init__(self, path: Path, line: int, field: str | None, detail: str) -> None:
        where = f"{path}, line {line}"
        if field is not None:
            where += f", column {field}"
        super().__init__(f"{where}: {detail}")
        self.path = path
        self.line = line
        self.field = field


@dataclass(frozen=True, slots=True)
class PizzaOrder:
    """One order of the pizza-place data set.

    ``source_id`` is the file's order_id. ``ordered_at`` is naive because the
    file records the restaurant's wall-clock time without a time zone, so
    attach the restaurant's zone before comparing it with aware timestamps.
    ``total`` is the sum of quantity times unit price over the items, and
    ``first_line`` the file line of the order's first row.
    """

    source_id: int
    ordered_at: datetime
    items: tuple[Item, ...]
    total: Decimal
    first_line: int


@dataclass(frozen=True, slots=True)
class _PizzaType:
    name: str
    station: str


def default_data_dir() -> Path | None:
    """Return the folder named by ORDERFLOW_PIZZA_DATA, or None when it is unset or empty."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    return Path(configured) if configured else None


def read_pizza_orders(
    order_lines: str | Path, pizza_types: str | Path | None = None
) -> Iterator[PizzaOrder]:
    """Read ``order_lines.csv`` and yield its orders in file order.

    The file is streamed: each order is yielded as soon as the first row of
    the next order, or the end of the file, is read.
    Every field of every row is validated, and the first bad row raises
    ImportFormatError with its line and column. An order id lower than the
    one before, rows of one order that are not consecutive or that disagree
    on date or time, and an order dated earlier than the one before are
    errors too.

    Each row becomes one Item named after the pizza type's display name and
    size, like ``"The Hawaiian Pizza (M)"``, at the station of its category in
    lower case, like ``"classic"``. ``pizza_types`` is read at once, so its
    errors raise here. Without it, items are named after the type id, like
    ``"hawaiian (M)"``, and have no station.
    """
    types = _read_pizza_types(Path(pizza_types)) if pizza_types is not None else None
    return _read_order_file(Path(order_lines), types)


def slice_by_days(orders: Iterable[PizzaOrder], days: int) -> Iterator[PizzaOrder]:
    """Yield the orders placed within the first ``days`` calendar days of ``orders``.

    The window starts at midnight of the first order's date and counts
    calendar days, including days without orders, so ``days=7`` gives one
    week. ``orders`` must be in time order, as read_pizza_orders yields them.
    Reading stops at the first order after the window, so a replay of one
    week does not read the rest of the file.

    Raises ConfigurationError when ``days`` is below 1, and ValueError when an
    order in the window is earlier than the one before it.
    """
    if days < 1:
        raise ConfigurationError(f"days must be at least 1, got {days}")
    return _slice_by_days(orders, days)


def _slice_by_days(orders: Iterable[PizzaOrder], days: int) -> Iterator[PizzaOrder]:
    end: datetime | None = None
    previous: PizzaOrder | None = None
    for order in orders:
        if end is None:
            end = datetime.combine(order.ordered_at.date(), time()) + timedelta(days=days)

        if order.ordered_at >= end:
            return

        if previous is not None and order.ordered_at < previous.ordered_at:
            raise ValueError(
                f"order {order.source_id} at {order.ordered_at} is earlier than order "
                f"{previous.source_id} at {previous.ordered_at}. Sort the orders by time."
            )

        previous = order
        yield order


def _read_pizza_types(path: Path) -> dict[str, _PizzaType]:
    types: dict[str, _PizzaType] = {}
    with path.open("rb") as file:
        reader = csv.reader(_decoded_lines(file, path), strict=True)
        _check_header(reader, path, PIZZA_TYPE_COLUMNS)

        for line, row in _numbered_rows(reader, path):
            _check_column_count(row, line, path, PIZZA_TYPE_COLUMNS)
            type_id, name, category, _ingredients = row
            required = (
                ("pizza_type_id", type_id),
                ("pizza_name", name),
                ("pizza_category", category),
            )
            for field, value in required:
                if not value.strip():
                    raise ImportFormatError(
                        path, line, field, f"{field} is empty. Expected a non-empty value."
                    )
            if type_id in types:
                raise ImportFormatError(
                    path,
                    line,
                    "pizza_type_id",
                    f"pizza_type_id {type_id!r} appears twice. Expected each type once.",
                )
            types[type_id] = _PizzaType(name, category.lower())

    return types


def _read_order_file(path: Path, types: dict[str, _PizzaType] | None) -> Iterator[PizzaOrder]:
    orders = 0
    with path.open("rb") as file:
        for order in _parse_order_lines(_decoded_lines(file, path), path, types):
            orders += 1
            yield order
    logger.debug("read %d orders from %s", orders, path)


def _decoded_lines(file: BinaryIO, path: Path) -> Iterator[str]:
    # Decoding line by line, not through a text wrapper that decodes ahead,
    # lets a UTF-8 error name its line.
    for number, raw in enumerate(file, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportFormatError(
                path,
                number,
                None,
                f"the line is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
            ) from exc
        if number == 1:
            text = text.removeprefix("\ufeff")
        yield text


def _numbered_rows(reader: CsvReader, path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield each row with the line it starts on, turning csv errors into ImportFormatError."""
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFormatError(path, line, None, f"the row is not valid CSV: {exc}.") from exc
        yield line, row


def _check_header(reader: CsvReader, path: Path, columns: tuple[str, ...]) -> None:
    expected = ",".join(columns)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFormatError(
            path, 1, None, f"the file is empty. Expected the header {expected}."
        ) from None
    except csv.Error as exc:
        raise ImportFormatError(path, 1, None, f"the header is not valid CSV: {exc}.") from exc

    if tuple(header) != columns:
        raise ImportFormatError(
            path, 1, None, f"the header is {','.join(header)!r}. Expected {expected}."
        )


def _check_column_count(row: list[str], line: int, path: Path, columns: tuple[str, ...]) -> None:
    if len(row) == len(columns):
        return
    if not row:
        raise ImportFormatError(
            path, line, None, f"the line is blank. Expected {len(columns)} columns."
        )
    if len(row) < len(columns):
        missing = columns[len(row)]
        raise ImportFormatError(
            path,
            line,
            missing,
            f"the row has {len(row)} columns, so {missing} is missing. "
            f"Expected {len(columns)} columns: {','.join(columns)}.",
        )
    raise ImportFormatError(
        path,
        line,
        None,
        f"the row has {len(row)} columns. Expected {len(columns)}: {','.join(columns)}.",
    )


def _parse_order_lines(
    lines: Iterable[str], path: Path, types: dict[str, _PizzaType] | None
) -> Iterator[PizzaOrder]:
    """Validate the rows of order_lines.csv and yield them grouped into orders.

    The caller opens and closes the file.
    """
    reader = csv.reader(lines, strict=True)
    _check_header(reader, path, ORDER_LINE_COLUMNS)
    fields = _FieldParser(path, types)

    seen: set[int] = set()
    order_id = 0
    ordered_date = date.min
    ordered_time = time.min
    ordered_at = datetime.min
    items: list[Item] = []
    total = Decimal(0)
    first_line = 0

    for line, row in _numbered_rows(reader, path):
        _check_column_count(row, line, path, ORDER_LINE_COLUMNS)
        (
            pizza_id_text,
            order_id_text,
            name_id,
            quantity_text,
            date_text,
            time_text,
            price_text,
            size,
        ) = row

        # Fields in column order, except that the size is checked before
        # pizza_name_id because the id must end with it.
        fields.positive_integer(pizza_id_text, line, "pizza_id")
        row_order_id = fields.positive_integer(order_id_text, line, "order_id")
        quantity = fields.positive_integer(quantity_text, line, "quantity")
        row_date = fields.order_date(date_text, line)
        row_time = fields.order_time(time_text, line)
        price = fields.unit_price(price_text, line)
        item = fields.item(name_id, size, quantity, line)

        if row_order_id == order_id:
            if row_date != ordered_date:
                raise fields.disagreement(line, "order_date", date_text, order_id, first_line)
            if row_time != ordered_time:
                raise fields.disagreement(line, "order_time", time_text, order_id, first_line)
            items.append(item)
            total += price * quantity
            continue

        if row_order_id < order_id:
            raise fields.order_id_backwards(line, row_order_id, order_id, row_order_id in seen)

        row_ordered_at = datetime.combine(row_date, row_time)
        if row_ordered_at < ordered_at:
            field, text = (
                ("order_date", date_text) if row_date < ordered_date else ("order_time", time_text)
            )
            raise ImportFormatError(
                path,
                line,
                field,
                f"{field} {text!r} puts order {row_order_id} at {row_ordered_at}, earlier "
                f"than order {order_id} at {ordered_at} on line {first_line}. Expected each "
                "order no earlier than the one before, because order ids rise with time.",
            )

        if items:
            yield PizzaOrder(order_id, ordered_at, tuple(items), total, first_line)

        seen.add(row_order_id)
        order_id = row_order_id
        ordered_date = row_date
        ordered_time = row_time
        ordered_at = row_ordered_at
        items = [item]
        total = price * quantity
        first_line = line

    if items:
        yield PizzaOrder(order_id, ordered_at, tuple(items), total, first_line)


class _FieldParser:
    """Validators of the fields of order_lines.csv, with caches.

    The file repeats few distinct dates, times, prices and pizzas, so each
    distinct text is validated once and its value reused.
    """

    def __init__(self, path: Path, types: dict[str, _PizzaType] | None) -> None:
        self.path = path
        self.types = types
        self._dates: dict[str, date] = {}
        self._times: dict[str, time] = {}
        self._prices: dict[str, Decimal] = {}
        self._items: dict[tuple[str, str, int], Item] = {}

    def positive_integer(self, text: str, line: int, field: str) -> int:
        if text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS:
            value = int(text)
            if value >= 1:
                return value
        raise self._invalid(
            line,
            field,
            text,
            f"Expected a whole number from 1 with at most {_MAX_DIGITS} digits, like 3.",
        )

    def order_date(self, text: str, line: int) -> date:
        cached = self._dates.get(text)
        if cached is not None:
            return cached

        match = _SLASH_DATE.fullmatch(text) or _DASH_DATE.fullmatch(text)
        if match is None:
            raise self._invalid(line, "order_date", text, _DATE_EXPECTED)
        day, month, year = (int(part) for part in match.groups())
        try:
            value = date(year, month, day)
        except ValueError:
            raise self._invalid(
                line,
                "order_date",
                text,
                "No such day exists. Expected a day that exists in its month, like 28-02-2015.",
            ) from None

        self._dates[text] = value
        return value

    def order_time(self, text: str, line: int) -> time:
        cached = self._times.get(text)
        if cached is not None:
            return cached

        match = _TIME.fullmatch(text)
        if match is None:
            raise self._invalid(line, "order_time", text, _TIME_EXPECTED)
        hour, minute, second = (int(part) for part in match.groups())
        try:
            value = time(hour, minute, second)
        except ValueError:
            raise self._invalid(line, "order_time", text, _TIME_EXPECTED) from None

        self._times[text] = value
        return value

    def unit_price(self, text: str, line: int) -> Decimal:
        cached = self._prices.get(text)
        if cached is not None:
            return cached

        if _PRICE.fullmatch(text) is None:
            raise self._invalid(line, "unit_price", text, _PRICE_EXPECTED)
        value = Decimal(text.replace(",", "."))
        if value <= 0:
            raise self._invalid(line, "unit_price", text, _PRICE_EXPECTED)

        self._prices[text] = value
        return value

    def item(self, name_id: str, size: str, quantity: int, line: int) -> Item:
        cached = self._items.get((name_id, size, quantity))
        if cached is not None:
            return cached

        if size not in PIZZA_SIZES:
            raise self._invalid(
                line, "pizza_size", size, f"Expected one of {', '.join(PIZZA_SIZES)}."
            )

        suffix = "_" + size.lower()
        type_id = name_id.removesuffix(suffix)
        if not type_id or type_id == name_id:
            raise self._invalid(
                line,
                "pizza_name_id",
                name_id,
                f"Expected a pizza type id followed by {suffix!r} to match "
                f"pizza_size {size}, like 'hawaiian{suffix}'.",
            )

        if self.types is None:
            value = Item(f"{type_id} ({size})", quantity)
        else:
            pizza_type = self.types.get(type_id)
            if pizza_type is None:
                raise ImportFormatError(
                    self.path,
                    line,
                    "pizza_name_id",
                    f"pizza_name_id {name_id!r} names the pizza type {type_id!r}, which "
                    "pizza_types.csv does not list. Expected a listed pizza_type_id "
                    f"followed by {suffix!r}, like 'hawaiian{suffix}'.",
                )
            value = Item(f"{pizza_type.name} ({size})", quantity, pizza_type.station)

        self._items[(name_id, size, quantity)] = value
        return value

    def disagreement(
        self, line: int, field: str, text: str, order_id: int, first_line: int
    ) -> ImportFormatError:
        return ImportFormatError(
            self.path,
            line,
            field,
            f"{field} {text!r} differs from line {first_line}, the first row of order "
            f"{order_id}. Expected every row of one order to have the same date and time.",
        )

    def order_id_backwards(
        self, line: int, order_id: int, previous: int, seen: bool
    ) -> ImportFormatError:
        if seen:
            problem = (
                f"order {order_id} continues after order {previous} began. "
                "Expected the rows of one order to be consecutive."
            )
        else:
            problem = (
                f"order_id {order_id} is lower than {previous} on the line before. "
                "Expected order ids that never decrease, because they rise with time."
            )
        return ImportFormatError(self.path, line, "order_id", problem)

    def _invalid(self, line: int, field: str, text: str, expected: str) -> ImportFormatError:
        return ImportFormatError(self.path, line, field, f"{field} {text!r} is invalid. {expected}")
