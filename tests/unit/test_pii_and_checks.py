"""The PII scan and the data check fail loudly on what must never be trained on."""

from __future__ import annotations

import pandas as pd
import pytest

from infra.plantly.catalog import load_catalog
from infra.plantly.population import build_population
from training.checks import DataCheckError, check_training_set
from training.contract import assemble_rows
from training.pii import scan_frame, scan_text


def _frame(rows: int = 60) -> pd.DataFrame:
    catalog = load_catalog()
    products: list[tuple[str, dict[str, float]]] = [(pid, {}) for pid in list(catalog)[:rows]]
    frame = pd.DataFrame(assemble_rows("u-1", "US-CA", "mobile", {}, products, catalog, 0.0))
    frame["label"] = [i % 2 for i in range(rows)]
    frame["event_ts"] = [float(i) for i in range(rows)]
    return frame


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("olivia.smith@example.com", "email"),
        ("+44 20 7946 0958", "phone"),
        ("(415) 555-0134", "phone"),
        ("5500-0000-0000-0004", "card_number"),
        ("221 Baker Street", "street_address"),
    ],
)
def test_each_kind_of_pii_is_found(text: str, kind: str) -> None:
    assert [f.kind for f in scan_text(f"note: {text}.")] == [kind]


def test_every_simulated_order_pii_value_is_found() -> None:
    users = build_population(users=200, world_seed=7).users
    frame = pd.DataFrame({"email": [u.email for u in users],
                          "address": [u.shipping_address for u in users]})  # fmt: skip
    kinds = {f.where: f.kind for f in scan_frame(frame, limit=10_000)}
    assert kinds == {"email": "email", "address": "street_address"}
    assert len(scan_frame(frame, limit=10_000)) == 400


def test_ids_prices_and_times_are_not_pii() -> None:
    assert scan_frame(_frame()) == []
    assert scan_text("order o-1795131000123 at 1795131000123 for 4111111111111112") == []


def test_the_digits_of_a_float_are_not_a_card_number() -> None:
    # 4111111111111111 passes Luhn: as a fraction it is still no card
    assert scan_text('{"edges": [0.4111111111111111, 12.4111111111111111]}') == []
    assert [f.kind for f in scan_text("card 4111111111111111.")] == ["card_number"]


def test_a_card_number_in_an_integer_column_is_found() -> None:
    frame = _frame()
    frame["user_purchases_30d"] = 4111111111111111
    assert [f.kind for f in scan_frame(frame)] == ["card_number"]


def test_the_data_check_names_every_failure() -> None:
    frame = _frame()
    frame.loc[3, "region"] = "ship to 12 Maple Ave"
    frame.loc[4, "price"] = None
    with pytest.raises(DataCheckError) as error:
        check_training_set(frame)
    message = str(error.value)
    assert "null_rates: nulls in price" in message
    assert "pii_scan: 1 finding(s): street_address in region" in message


def test_the_data_check_refuses_a_set_without_positives() -> None:
    frame = _frame()
    frame["label"] = 0
    report = check_training_set(frame, raise_on_failure=False)
    assert report.failures() == ["label_balance: 0 positives and 60 negatives; need 20 of each"]


def test_the_data_check_refuses_wrong_types() -> None:
    frame = _frame()
    frame["price"] = frame["price"].astype(str)
    report = check_training_set(frame, raise_on_failure=False)
    assert report.failures()[0].startswith("schema: wrong types: price is ")
