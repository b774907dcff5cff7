"""Fee rules: a first-match table built at import, and exact Decimal fee arithmetic.

Currencies (minor-unit exponent, fixed fee, largest amount) come from
``data/currencies.json`` shipped inside the package. A fee is
``amount * percent`` rounded half-up to the currency's minor unit, plus the
currency's fixed fee when the rule charges one, and never more than the amount.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from thaw import Rejected

from .contracts import Currency, FeeQuote

DATA_FILE = Path(__file__).parent / "data" / "currencies.json"


@dataclass(frozen=True, slots=True)
class CurrencyInfo:
    code: Currency
    exponent: int  # 2 for USD (cents), 0 for JPY, 3 for KWD
    fixed_fee: int  # minor units
    max_amount: int  # minor units
    quantum: Decimal  # one minor unit in major units: Decimal("0.01") for USD

    def to_major(self, minor: int) -> Decimal:
        return Decimal(minor).scaleb(-self.exponent)

    def to_minor(self, major: Decimal) -> int:
        scaled = major.scaleb(self.exponent)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{major} {self.code} is finer than the minor unit")
        return int(scaled)

    def display(self, minor: int) -> str:
        return f"{self.to_major(minor):.{self.exponent}f} {self.code}"


def load_currencies(path: Path = DATA_FILE) -> dict[Currency, CurrencyInfo]:
    raw = json.loads(path.read_text(encoding="utf-8"))["currencies"]
    missing = {code.value for code in Currency} - set(raw)
    if missing:
        raise RuntimeError(f"{path} has no entry for currencies {sorted(missing)}")
    table: dict[Currency, CurrencyInfo] = {}
    for code in Currency:
        spec, exponent = raw[code.value], int(raw[code.value]["exponent"])
        unit = Decimal(1).scaleb(-exponent)
        fixed, limit = Decimal(spec["fixed_fee"]) / unit, Decimal(spec["max_amount"]) / unit
        if fixed != int(fixed) or limit != int(limit):
            raise RuntimeError(f"{path}: {code.value} amounts are finer than its minor unit")
        table[code] = CurrencyInfo(code, exponent, int(fixed), int(limit), unit)
    return table


CURRENCIES = load_currencies()


@dataclass(frozen=True, slots=True)
class FeeRule:
    name: str
    percent: Decimal
    fixed: bool = True
    customer: re.Pattern[str] | None = None
    metadata: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    origin_host: re.Pattern[str] | None = None  # matched against metadata["origin_url"]'s host

    def matches(self, customer: str, metadata: Mapping[str, str]) -> bool:
        if self.customer is not None and not self.customer.match(customer):
            return False
        for key, pattern in self.metadata.items():
            if not pattern.fullmatch(metadata.get(key, "")):
                return False
        if self.origin_host is not None:
            host = origin_host(metadata.get("origin_url", ""))
            if host is None or not self.origin_host.search(host):
                return False
        return True


def origin_host(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


# First match wins; the last rule matches everything.
RULES: tuple[FeeRule, ...] = (
    FeeRule("internal", Decimal("0"), fixed=False, customer=re.compile(r"cus_int_")),
    FeeRule("enterprise", Decimal("1.4"), customer=re.compile(r"cus_ent_")),
    FeeRule(
        "marketplace",
        Decimal("3.4"),
        origin_host=re.compile(r"(^|\.)(shop|market)\.example\.com$"),
    ),
    FeeRule(
        "in_person",
        Decimal("2.7"),
        metadata={"channel": re.compile(r"pos|terminal", re.IGNORECASE)},
    ),
    FeeRule("standard", Decimal("2.9")),
)
RULES_BY_NAME = {rule.name: rule for rule in RULES}


def select_rule(customer: str, metadata: Mapping[str, str]) -> FeeRule:
    for rule in RULES:
        if rule.matches(customer, metadata):
            return rule
    raise AssertionError("the last rule matches everything")  # pragma: no cover


def compute_fee(amount: int, info: CurrencyInfo, rule: FeeRule) -> int:
    """The fee in minor units for ``amount`` minor units under ``rule``."""
    variable = (info.to_major(amount) * rule.percent / 100).quantize(
        info.quantum, rounding=ROUND_HALF_UP
    )
    fee = info.to_minor(variable) + (info.fixed_fee if rule.fixed else 0)
    return min(fee, amount)


def quote(amount: int, currency: Currency, customer: str, metadata: Mapping[str, str]) -> FeeQuote:
    info = CURRENCIES[currency]
    if amount > info.max_amount:
        raise Rejected(
            f"amount {info.display(amount)} is above the limit of {info.display(info.max_amount)}",
            code="amount_too_large",
        )
    rule = select_rule(customer, metadata)
    fee = compute_fee(amount, info, rule)
    return FeeQuote(
        amount=amount,
        fee=fee,
        net=amount - fee,
        currency=currency,
        rule=rule.name,
        display_fee=info.display(fee),
    )
