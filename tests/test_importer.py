"""Tests of the pizza-place importer.

The tests on the real data set skip, with the reason, when the data is not
found. The format tests write small CSV files of their own.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from orderflow import ConfigurationError, OrderflowError
from orderflow.importer import (
    DATA_DIR_VARIABLE,
    ORDER_LINE_COLUMNS,
    ImportFormatError,
    PizzaOrder,
    default_data_dir,
    read_pizza_orders,
    slice_by_days,
)
from orderflow.models import Item
from tests.conftest import pizza_data_dir

RawRow = dict[str, str]


def parse_raw_date(text: str) -> date:
    """Read a date of the data set day first, independently of the importer."""
    separator = "/" if "/" in text else "-"
    day, month, year = (int(part) for part in text.split(separator))
    return date(year, month, day)


def raw_datetime(row: RawRow) -> datetime:
    hour, minute, second = (int(part) for part in row["order_time"].split(":"))
    return datetime.combine(parse_raw_date(row["order_date"]), datetime.min.time()).replace(
        hour=hour, minute=minute, second=second
    )


# Real data set


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return pizza_data_dir()


@pytest.fixture(scope="module")
def real_orders(data_dir: Path) -> list[PizzaOrder]:
    return list(read_pizza_orders(data_dir / "order_lines.csv", data_dir / "pizza_types.csv"))


@pytest.fixture(scope="module")
def raw_rows(data_dir: Path) -> list[RawRow]:
    with (data_dir / "order_lines.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def raw_types(data_dir: Path) -> dict[str, RawRow]:
    with (data_dir / "pizza_types.csv").open(newline="", encoding="utf-8") as file:
        return {row["pizza_type_id"]: row for row in csv.DictReader(file)}


def test_real_order_count(real_orders: list[PizzaOrder]) -> None:
    assert len(real_orders) == 21_350


def test_real_line_count(real_orders: list[PizzaOrder], raw_rows: list[RawRow]) -> None:
    lines = sum(len(order.items) for order in real_orders)

    assert lines == 48_620
    assert lines == len(raw_rows)


def test_real_ids_rise(real_orders: list[PizzaOrder]) -> None:
    ids = [order.source_id for order in real_orders]

    assert all(earlier < later for earlier, later in itertools.pairwise(ids))


def test_real_times_never_decrease(real_orders: list[PizzaOrder]) -> None:
    times = [order.ordered_at for order in real_orders]

    assert all(earlier <= later for earlier, later in itertools.pairwise(times))


def test_real_both_date_spellings(raw_rows: list[RawRow]) -> None:
    slash = [row for row in raw_rows if "/" in row["order_date"]]
    dash = [row for row in raw_rows if "-" in row["order_date"]]

    assert slash
    assert dash
    assert len(slash) + len(dash) == len(raw_rows)


def test_real_known_rows(real_orders: list[PizzaOrder], raw_rows: list[RawRow]) -> None:
    # The first row, the last slash date before the first dash date (day 12
    # then day 13 of the same month), a slash date whose day and month
    # differ, and the last row.
    first_dash = next(i for i, row in enumerate(raw_rows) if "-" in row["order_date"])
    mixed = next(i for i, row in enumerate(raw_rows) if row["order_date"].startswith("2/1/"))
    picks = [0, first_dash - 1, first_dash, mixed, len(raw_rows) - 1]
    by_id = {order.source_id: order for order in real_orders}

    for index in picks:
        row = raw_rows[index]
        order = by_id[int(row["order_id"])]
        assert order.ordered_at == raw_datetime(row), row

    before, after = raw_rows[first_dash - 1], raw_rows[first_dash]
    gap = parse_raw_date(after["order_date"]) - parse_raw_date(before["order_date"])
    assert gap == timedelta(days=1)
    assert by_id[int(raw_rows[mixed]["order_id"])].ordered_at.date() == date(2015, 1, 2)


def test_real_month_first_goes_backwards(raw_rows: list[RawRow]) -> None:
    # Evidence for the day-first reading: read month first, the slash dates
    # put some orders before orders with lower ids.
    def month_first(text: str) -> date:
        if "/" not in text:
            return parse_raw_date(text)
        month, day, year = (int(part) for part in text.split("/"))
        return date(year, month, day)

    dates = [month_first(row["order_date"]) for row in raw_rows]

    assert any(later < earlier for earlier, later in itertools.pairwise(dates))


def test_real_item_names(
    real_orders: list[PizzaOrder], raw_rows: list[RawRow], raw_types: dict[str, RawRow]
) -> None:
    expected = []
    for row in raw_rows:
        size = row["pizza_size"]
        type_id = row["pizza_name_id"].removesuffix("_" + size.lower())
        pizza_type = raw_types[type_id]
        expected.append(
            Item(
                f"{pizza_type['pizza_name']} ({size})",
                int(row["quantity"]),
                pizza_type["pizza_category"].lower(),
            )
        )

    items = [item for order in real_orders for item in order.items]

    assert items == expected
    assert real_orders[0].items[0].name == "The Hawaiian Pizza (M)"
    assert real_orders[0].items[0].station == "classic"


def test_real_totals(real_orders: list[PizzaOrder], raw_rows: list[RawRow]) -> None:
    expected: dict[int, Decimal] = {}
    for row in raw_rows:
        amount = int(row["quantity"]) * Decimal(row["unit_price"].replace(",", "."))
        order_id = int(row["order_id"])
        expected[order_id] = expected.get(order_id, Decimal(0)) + amount

    totals = {order.source_id: order.total for order in real_orders}

    assert all(total > 0 for total in totals.values())
    assert totals == expected


def test_real_first_lines(real_orders: list[PizzaOrder], raw_rows: list[RawRow]) -> None:
    # Line 1 is the header, so raw row i is on line i + 2.
    first_lines: dict[int, int] = {}
    for index, row in enumerate(raw_rows):
        first_lines.setdefault(int(row["order_id"]), index + 2)

    assert {order.source_id: order.first_line for order in real_orders} == first_lines


def test_real_week_slice(data_dir: Path, real_orders: list[PizzaOrder]) -> None:
    start = real_orders[0].ordered_at.date()
    expected = [o for o in real_orders if o.ordered_at.date() < start + timedelta(days=7)]

    week = list(slice_by_days(read_pizza_orders(data_dir / "order_lines.csv"), 7))

    assert [order.source_id for order in week] == [order.source_id for order in expected]
    assert 0 < len(week) < len(real_orders)
    assert week[-1].ordered_at.date() == start + timedelta(days=6)


# Small files written by the tests

PIZZA_TYPES = (
    "pizza_type_id,pizza_name,pizza_category,pizza_ingredients\n"
    'hawaiian,The Hawaiian Pizza,Classic,"Sliced Ham, Pineapple, Mozzarella Cheese"\n'
    'bbq_ckn,The Barbecue Chicken Pizza,Chicken,"Barbecued Chicken, Red Peppers"\n'
    "the_greek,The Greek Pizza,Classic,Feta Cheese\n"
)


def row(**changes: str) -> list[str]:
    """Return a valid row of order 3 on 2 January 2015, with ``changes`` applied."""
    values = {
        "pizza_id": "3",
        "order_id": "3",
        "pizza_name_id": "hawaiian_m",
        "quantity": "1",
        "order_date": "2/1/2015",
        "order_time": "12:00:00",
        "unit_price": "13,25",
        "pizza_size": "M",
    }
    values.update(changes)
    return list(values.values())


# Orders 1 and 2 on lines 2 and 3, so the row under test is on line 4.
GOOD_ROWS = [
    row(pizza_id="1", order_id="1", order_date="1/1/2015", order_time="11:00:00"),
    row(pizza_id="2", order_id="2", order_date="1/1/2015", order_time="12:00:00"),
]


def csv_text(rows: Sequence[Sequence[str]], header: Sequence[str] = ORDER_LINE_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


@pytest.fixture
def types_path(tmp_path: Path) -> Path:
    path = tmp_path / "pizza_types.csv"
    path.write_text(PIZZA_TYPES, encoding="utf-8")
    return path


def write_orders(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "order_lines.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_all(path: Path, types_path: Path | None = None) -> list[PizzaOrder]:
    return list(read_pizza_orders(path, types_path))


def bad_row(field: str, value: str, **changes: str) -> list[list[str]]:
    return [*GOOD_ROWS, row(**{field: value}, **changes)]


def case(rows: list[list[str]], field: str | None, value: str | None, id: str) -> object:
    return pytest.param(rows, field, value, id=id)


FORMAT_CASES = [
    case(bad_row("order_date", "2015-01-13"), "order_date", "2015-01-13", id="date-iso"),
    case(bad_row("order_date", "1/13/2015"), "order_date", "1/13/2015", id="date-month-first"),
    case(bad_row("order_date", "32-01-2015"), "order_date", "32-01-2015", id="date-day-32"),
    case(bad_row("order_date", "13/01/2015"), "order_date", "13/01/2015", id="date-slash-day-13"),
    case(bad_row("order_date", "13/1/2015"), "order_date", "13/1/2015", id="date-slash-13-short"),
    case(bad_row("order_date", "02/01/2015"), "order_date", "02/01/2015", id="date-slash-padded"),
    case(bad_row("order_date", "05-01-2015"), "order_date", "05-01-2015", id="date-dash-day-5"),
    case(bad_row("order_date", "29-02-2015"), "order_date", "29-02-2015", id="date-feb-29"),
    case(bad_row("order_date", "13-13-2015"), "order_date", "13-13-2015", id="date-month-13"),
    case(bad_row("order_date", "31-04-2015"), "order_date", "31-04-2015", id="date-apr-31"),
    case(bad_row("order_date", "2/1/15"), "order_date", "2/1/15", id="date-short-year"),
    case(bad_row("order_date", "2/1/2015 "), "order_date", "2/1/2015 ", id="date-trailing-space"),
    case(bad_row("order_date", ""), "order_date", "", id="date-empty"),
    case(bad_row("order_time", "24:00:00"), "order_time", "24:00:00", id="time-hour-24"),
    case(bad_row("order_time", "11:60:00"), "order_time", "11:60:00", id="time-minute-60"),
    case(bad_row("order_time", "11:38"), "order_time", "11:38", id="time-no-seconds"),
    case(bad_row("order_time", "9:38:36"), "order_time", "9:38:36", id="time-short-hour"),
    case(bad_row("order_time", "11.38.36"), "order_time", "11.38.36", id="time-dots"),
    case(bad_row("unit_price", "13.25"), "unit_price", "13.25", id="price-dot"),
    case(bad_row("unit_price", "abc"), "unit_price", "abc", id="price-garbage"),
    case(bad_row("unit_price", "0"), "unit_price", "0", id="price-zero"),
    case(bad_row("unit_price", "0,00"), "unit_price", "0,00", id="price-zero-cents"),
    case(bad_row("unit_price", "-13,25"), "unit_price", "-13,25", id="price-negative"),
    case(bad_row("unit_price", "13,255"), "unit_price", "13,255", id="price-three-decimals"),
    case(bad_row("unit_price", "13,"), "unit_price", "13,", id="price-no-decimals"),
    case(bad_row("unit_price", ""), "unit_price", "", id="price-empty"),
    case(bad_row("quantity", "0"), "quantity", "0", id="quantity-zero"),
    case(bad_row("quantity", "-1"), "quantity", "-1", id="quantity-negative"),
    case(bad_row("quantity", "x"), "quantity", "x", id="quantity-letter"),
    case(bad_row("quantity", "1.5"), "quantity", "1.5", id="quantity-fraction"),
    case(bad_row("quantity", "+1"), "quantity", "+1", id="quantity-plus"),
    case(bad_row("quantity", "٣"), "quantity", "٣", id="quantity-arabic-digit"),
    case(bad_row("pizza_id", "a"), "pizza_id", "a", id="pizza-id-letter"),
    case(bad_row("order_id", "3.0"), "order_id", "3.0", id="order-id-fraction"),
    case(bad_row("pizza_size", "XS"), "pizza_size", "XS", id="size-unknown"),
    case(bad_row("pizza_size", "m"), "pizza_size", "m", id="size-lower-case"),
    case(
        bad_row("pizza_name_id", "hawaiian_l"),
        "pizza_name_id",
        "hawaiian_l",
        id="name-size-differs",
    ),
    case(bad_row("pizza_name_id", "hawaiian"), "pizza_name_id", "hawaiian", id="name-no-size"),
    case(bad_row("pizza_name_id", "_m"), "pizza_name_id", "_m", id="name-no-type"),
    case(
        bad_row("pizza_name_id", "calzone_m"), "pizza_name_id", "calzone_m", id="name-unknown-type"
    ),
    case([*GOOD_ROWS, row()[:7]], "pizza_size", None, id="column-missing"),
    case([*GOOD_ROWS, row()[:5]], "order_time", None, id="columns-missing"),
    case([*GOOD_ROWS, [*row(), "x"]], None, None, id="column-extra"),
    case([*GOOD_ROWS, []], None, None, id="line-blank"),
    case(bad_row("order_id", "1"), "order_id", None, id="order-not-consecutive"),
    case(
        [GOOD_ROWS[0], row(pizza_id="2", order_id="4"), row()],
        "order_id",
        None,
        id="order-id-backwards",
    ),
    case(bad_row("order_id", "2"), "order_date", "2/1/2015", id="order-date-differs"),
    case(
        bad_row("order_id", "2", order_date="1/1/2015", order_time="12:00:01"),
        "order_time",
        "12:00:01",
        id="order-time-differs",
    ),
    case(bad_row("order_date", "31-12-2014"), "order_date", "31-12-2014", id="date-backwards"),
    case(
        bad_row("order_date", "1/1/2015", order_time="11:59:59"),
        "order_time",
        "11:59:59",
        id="time-backwards",
    ),
]


@pytest.mark.parametrize(("rows", "field", "value"), FORMAT_CASES)
def test_format_error(
    tmp_path: Path,
    types_path: Path,
    rows: list[list[str]],
    field: str | None,
    value: str | None,
) -> None:
    path = write_orders(tmp_path, csv_text(rows))

    with pytest.raises(ImportFormatError) as caught:
        read_all(path, types_path)

    error = caught.value
    message = str(error)
    assert error.line == 4
    assert error.field == field
    assert error.path == path
    assert "line 4" in message
    if field is not None:
        assert f"column {field}" in message
    if value is not None:
        assert repr(value) in message


def test_format_error_is_value_error(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text(bad_row("quantity", "0")))

    with pytest.raises(ImportFormatError) as caught:
        read_all(path)

    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, OrderflowError)


def test_format_error_message(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text(bad_row("order_date", "2015-01-13")))

    with pytest.raises(ImportFormatError) as caught:
        read_all(path)

    assert str(caught.value) == (
        f"{path}, line 4, column order_date: order_date '2015-01-13' is invalid. "
        "Expected D/M/YYYY for days 1 to 12, like 7/3/2015, "
        "or DD-MM-YYYY for days 13 to 31, like 21-03-2015."
    )


def test_format_not_consecutive_message(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text(bad_row("order_id", "1")))

    with pytest.raises(ImportFormatError, match="consecutive"):
        read_all(path)


def test_format_backwards_message(tmp_path: Path) -> None:
    rows = [GOOD_ROWS[0], row(pizza_id="2", order_id="4"), row()]
    path = write_orders(tmp_path, csv_text(rows))

    with pytest.raises(ImportFormatError, match="order_id 3 is lower than 4"):
        read_all(path)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("", 1, id="empty-file"),
        pytest.param("pizza_id,order_id\n", 1, id="short-header"),
        pytest.param(csv_text(GOOD_ROWS).replace("quantity", "qty"), 1, id="renamed-column"),
        pytest.param(
            csv_text(GOOD_ROWS) + '3,3,hawaiian_m,1,2/1/2015,12:00:00,"13,25\n', 4, id="open-quote"
        ),
        pytest.param(
            csv_text(GOOD_ROWS) + '3,3,hawaiian_m,1,2/1/2015,12:00:00,"13,25"x,M\n',
            4,
            id="text-after-quote",
        ),
    ],
)
def test_format_row_error(tmp_path: Path, text: str, line: int) -> None:
    path = write_orders(tmp_path, text)

    with pytest.raises(ImportFormatError) as caught:
        read_all(path)

    assert caught.value.line == line
    assert caught.value.field is None
    assert f"line {line}" in str(caught.value)


def test_format_invalid_utf8(tmp_path: Path) -> None:
    text = csv_text(GOOD_ROWS).encode() + b"3,3,hawaiian_m,1,2/1/2015,12:00:00,13,M\xff\n"
    path = write_orders(tmp_path, text)

    with pytest.raises(ImportFormatError, match="UTF-8") as caught:
        read_all(path)

    assert caught.value.line == 4


def test_read_groups_orders(tmp_path: Path, types_path: Path) -> None:
    rows = [
        row(pizza_id="1", order_id="1", order_date="13-01-2015", order_time="11:38:36"),
        row(
            pizza_id="2",
            order_id="1",
            order_date="13-01-2015",
            order_time="11:38:36",
            pizza_name_id="bbq_ckn_l",
            pizza_size="L",
            quantity="2",
            unit_price="20,75",
        ),
        row(
            pizza_id="3",
            order_id="7",
            order_date="14-01-2015",
            pizza_name_id="the_greek_xxl",
            pizza_size="XXL",
            unit_price="35,95",
        ),
    ]
    path = write_orders(tmp_path, csv_text(rows))

    first, second = read_all(path, types_path)

    assert first == PizzaOrder(
        source_id=1,
        ordered_at=datetime(2015, 1, 13, 11, 38, 36),
        items=(
            Item("The Hawaiian Pizza (M)", 1, "classic"),
            Item("The Barbecue Chicken Pizza (L)", 2, "chicken"),
        ),
        total=Decimal("54.75"),
        first_line=2,
    )
    assert second.source_id == 7
    assert second.items == (Item("The Greek Pizza (XXL)", 1, "classic"),)
    assert second.first_line == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1/1/2015", date(2015, 1, 1), id="slash-first-day"),
        pytest.param("7/3/2015", date(2015, 3, 7), id="slash-day-first"),
        pytest.param("12/12/2015", date(2015, 12, 12), id="slash-day-12"),
        pytest.param("13-01-2015", date(2015, 1, 13), id="dash-day-13"),
        pytest.param("31-12-2015", date(2015, 12, 31), id="dash-last-day"),
        pytest.param("29-02-2016", date(2016, 2, 29), id="dash-leap-day"),
    ],
)
def test_read_date_spellings(tmp_path: Path, text: str, expected: date) -> None:
    path = write_orders(tmp_path, csv_text([row(order_date=text)]))

    (order,) = read_all(path)

    assert order.ordered_at == datetime.combine(expected, datetime.min.time()).replace(hour=12)


def test_read_whole_number_price(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text([row(unit_price="16", quantity="3")]))

    (order,) = read_all(path)

    assert order.total == Decimal(48)


def test_read_without_types(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text([row(pizza_name_id="calzone_xl", pizza_size="XL")]))

    (order,) = read_all(path)

    assert order.items == (Item("calzone (XL)", 1),)


def test_read_header_only(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text([]))

    assert read_all(path) == []


def test_read_bom_and_crlf(tmp_path: Path) -> None:
    text = "\ufeff" + csv_text(GOOD_ROWS).replace("\n", "\r\n")
    path = write_orders(tmp_path, text)

    orders = read_all(path)

    assert [order.source_id for order in orders] == [1, 2]


def test_read_streams_orders(tmp_path: Path) -> None:
    # Order 1 is complete once line 3 starts order 2, so it is yielded before
    # the bad line 4 is read.
    path = write_orders(tmp_path, csv_text(bad_row("quantity", "x")))
    orders = read_pizza_orders(path)

    first = next(orders)

    assert first.source_id == 1
    with pytest.raises(ImportFormatError):
        next(orders)


def test_types_read_at_call(tmp_path: Path) -> None:
    path = write_orders(tmp_path, csv_text(GOOD_ROWS))

    with pytest.raises(FileNotFoundError):
        read_pizza_orders(path, tmp_path / "missing.csv")


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        pytest.param("pizza_type_id,pizza_name\n", 1, None, id="header"),
        pytest.param(
            PIZZA_TYPES + "hawaiian,Again,Classic,Ham\n", 5, "pizza_type_id", id="duplicate"
        ),
        pytest.param(PIZZA_TYPES + "calzone,,Classic,Ham\n", 5, "pizza_name", id="empty-name"),
        pytest.param(
            PIZZA_TYPES + "calzone,The Calzone,Classic\n",
            5,
            "pizza_ingredients",
            id="missing-column",
        ),
    ],
)
def test_types_format_error(tmp_path: Path, text: str, line: int, field: str | None) -> None:
    types_path = tmp_path / "pizza_types.csv"
    types_path.write_text(text, encoding="utf-8")
    path = write_orders(tmp_path, csv_text(GOOD_ROWS))

    with pytest.raises(ImportFormatError) as caught:
        read_pizza_orders(path, types_path)

    assert caught.value.path == types_path
    assert caught.value.line == line
    assert caught.value.field == field


def test_default_data_dir_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))

    assert default_data_dir() == tmp_path


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_default_data_dir_none(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(DATA_DIR_VARIABLE, value)

    assert default_data_dir() is None


# slice_by_days on small files

# Orders 1 and 2 on 1 January, 3 on the 2nd, none on the 3rd, 4 on the 4th
# and 5 on the 5th.
SLICE_ROWS = [
    row(pizza_id="1", order_id="1", order_date="1/1/2015", order_time="11:00:00"),
    row(pizza_id="2", order_id="2", order_date="1/1/2015", order_time="23:59:59"),
    row(pizza_id="3", order_id="3", order_date="2/1/2015", order_time="00:00:00"),
    row(pizza_id="4", order_id="4", order_date="4/1/2015", order_time="12:00:00"),
    row(pizza_id="5", order_id="5", order_date="5/1/2015", order_time="12:00:00"),
]


@pytest.mark.parametrize(
    ("days", "ids"),
    [
        pytest.param(1, [1, 2], id="one-day"),
        pytest.param(2, [1, 2, 3], id="two-days"),
        pytest.param(3, [1, 2, 3], id="day-without-orders"),
        pytest.param(4, [1, 2, 3, 4], id="four-days"),
        pytest.param(100, [1, 2, 3, 4, 5], id="past-the-end"),
    ],
)
def test_slice_days(tmp_path: Path, days: int, ids: list[int]) -> None:
    path = write_orders(tmp_path, csv_text(SLICE_ROWS))

    orders = slice_by_days(read_pizza_orders(path), days)

    assert [order.source_id for order in orders] == ids


def test_slice_stops_reading(tmp_path: Path) -> None:
    # The slice stops at order 4, the first one after the window, so the
    # reader never reaches the bad last line.
    rows = [*SLICE_ROWS, row(pizza_id="6", order_id="6", quantity="x", order_date="6/1/2015")]
    path = write_orders(tmp_path, csv_text(rows))

    orders = slice_by_days(read_pizza_orders(path), 2)

    assert [order.source_id for order in orders] == [1, 2, 3]


@pytest.mark.parametrize("days", [0, -1])
def test_slice_rejects_days(days: int) -> None:
    with pytest.raises(ConfigurationError, match="days must be at least 1"):
        slice_by_days([], days)


def test_slice_empty_input() -> None:
    assert list(slice_by_days([], 7)) == []


def make_order(source_id: int, ordered_at: datetime) -> PizzaOrder:
    return PizzaOrder(source_id, ordered_at, (Item("x", 1),), Decimal(1), source_id + 1)


def test_slice_rejects_unsorted() -> None:
    orders = [make_order(1, datetime(2015, 1, 1, 12)), make_order(2, datetime(2015, 1, 1, 11))]

    with pytest.raises(ValueError, match="earlier than order 1"):
        list(slice_by_days(orders, 1))
