"""What a recorded run of a host would cost under price models: ``thaw cost``'s arithmetic.

A *run* (``cost_run.Run``: the difference of two scrapes of a host's ``/metrics``) says
per capability what a bill is made of: invocations, billed wall seconds and their
histogram, CPU seconds, bytes, retried and dead-lettered attempts, cold starts. Billed
duration per model is the wall time with each invocation rounded up to the model's
billing granularity, estimated from the histogram's buckets (``billed_seconds``).

Price models come from a TOML file (``prices.toml`` beside this module is the shipped
example; its prices are examples, not quotes). Two kinds:

- ``serverless``: per request, per GB-second of billed duration at a memory size, per
  CPU millisecond, a monthly fee with included allowances (AWS Lambda and Cloudflare
  Workers are both this shape);
- ``container``: always-on instances at $/vCPU-hour + $/GB-hour (or a flat $/hour),
  as many as the measured CPU per invocation needs at a target utilisation.

For each model: the monthly cost at the measured rate, the cost per million
invocations, the split per capability (compute, requests, retry tax, fixed fee), and
the loads (requests/s) where a serverless model and a container cost the same.

Invariants: costs are never negative; the per-capability parts add up to the model's
total; a month is ``month_hours`` (730 by default, as AWS bills); nothing here reads a clock
or does I/O but ``load_prices``.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

import msgspec

from thaw._errors import ConfigError
from thaw.adapters.telemetry.cost_run import LatencyBucket, Run, bucket_bound

__all__ = [
    "BreakEven",
    "CapabilityCost",
    "Container",
    "CostReport",
    "ModelCost",
    "Prices",
    "PricesInvalid",
    "Serverless",
    "billed_seconds",
    "billing_detail",
    "invocation_cpu_seconds",
    "break_even",
    "container_instances",
    "cost_report",
    "load_prices",
    "monthly_cost",
    "parse_prices",
]

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class PricesInvalid(ConfigError):
    """A price file is not TOML or does not match the price-model schema."""

    code = "prices_invalid"


# -- price models ------------------------------------------------------------------

Money = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e18)]


class Serverless(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="serverless"
):
    """Pay per use: requests, GB-seconds of billed duration, CPU milliseconds, a fee."""

    description: str = ""
    source: str = ""  # where the prices come from, and when
    per_million_requests: Money = 0.0
    per_gb_second: Money = 0.0
    per_million_cpu_ms: Money = 0.0
    per_month: Money = 0.0  # a subscription, whatever the use
    included_requests: Amount = 0.0  # per month, before per_million_requests applies
    included_gb_seconds: Amount = 0.0
    included_cpu_ms: Amount = 0.0
    # The memory billed per GB-second: a size in MB, or "measured" (the host's largest
    # resident memory, rounded up to memory_step_mb and at least min_memory_mb).
    memory_mb: Annotated[float, msgspec.Meta(gt=0, le=1e6)] | Literal["measured"] = "measured"
    min_memory_mb: Annotated[float, msgspec.Meta(ge=0, le=1e6)] = 128.0
    memory_step_mb: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 1.0
    billing_ms: Annotated[float, msgspec.Meta(gt=0, le=3.6e6)] = 1.0  # duration granularity


class Container(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="container"
):
    """Always on: instances billed per hour whether busy or not."""

    description: str = ""
    source: str = ""
    per_vcpu_hour: Money = 0.0
    per_gb_hour: Money = 0.0
    per_hour: Money = 0.0  # a flat price per instance (a VM), on top of the two above
    vcpus: Annotated[float, msgspec.Meta(gt=0, le=1e4)] = 1.0
    memory_gb: Annotated[float, msgspec.Meta(ge=0, le=1e5)] = 2.0
    utilisation: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.6  # of the vCPUs, at most
    min_instances: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1


Model = Serverless | Container


class Prices(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A price file: named models, the currency they are in, the length of a month."""

    models: Annotated[
        dict[Annotated[str, msgspec.Meta(pattern=f"^{_NAME}$")], Model], msgspec.Meta(min_length=1)
    ]
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z$€£¥]{1,8}$")] = "USD"
    month_hours: Annotated[float, msgspec.Meta(gt=0, le=744)] = 730.0


def parse_prices(text: str | bytes, *, source: str = "prices") -> Prices:
    """A price file's TOML as ``Prices``; a bad one raises PricesInvalid naming the field."""
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PricesInvalid(f"{source} is not TOML: {exc}") from None
    models = raw.get("models")
    try:
        for name, model in models.items() if isinstance(models, dict) else ():
            if not re.fullmatch(_NAME, name):
                raise PricesInvalid(
                    f"{source}: model name {name[:70]!r} (in models): use 1-64 letters, "
                    "digits, '.', '_' or '-', starting with a letter or digit"
                )
            try:  # each model first, so that an error names it: models.lambda.per_gb_second
                msgspec.convert(model, Model)
            except msgspec.ValidationError as exc:
                text = str(exc)
                text = (
                    text.replace("`$", f"`$.models.{name}")
                    if "`$" in text
                    else (f"{text} - at `$.models.{name}`")
                )
                raise msgspec.ValidationError(text) from None
        return msgspec.convert(raw, Prices)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("`$.", "`")
        raise PricesInvalid(
            f"{source}: {message} (`thaw cost prices` prints the shipped example with every "
            "field; "
            'each model needs kind = "serverless" or "container")'
        ) from None


def load_prices(path: str) -> Prices:
    try:
        with open(path, "rb") as file:
            data = file.read(1024 * 1024 + 1)
    except OSError as exc:
        raise PricesInvalid(f"cannot read the price file {path}: {exc.strerror}") from None
    if len(data) > 1024 * 1024:
        raise PricesInvalid(f"{path} is larger than 1 MiB: not a price file")
    return parse_prices(data, source=path)


# -- billed duration ------------------------------------------------------------------


def billed_seconds(
    latency: Iterable[LatencyBucket], wall_seconds: float, granularity: float
) -> float:
    """Wall seconds with each invocation rounded up to ``granularity`` (seconds).

    Only the histogram is known, not each duration: within a bucket (lo, hi] durations
    are taken as uniform, and the mean rounding overhead E[ceil(d/g)g - d] of that
    distribution is added per invocation to the measured sum. Durations above the last
    finite bound get g/2. Never below one granule per invocation.
    """
    if granularity <= 0:
        raise ValueError("granularity must be positive")
    extra = 0.0
    invocations = 0
    lower = 0.0
    for bucket in latency:
        upper = bucket_bound(bucket.le)
        if bucket.count:
            invocations += bucket.count
            if math.isinf(upper):
                extra += bucket.count * granularity / 2
            else:
                extra += bucket.count * _mean_round_up_overhead(lower, upper, granularity)
        if not math.isinf(upper):
            lower = upper
    return max(wall_seconds + extra, invocations * granularity)


def _mean_round_up_overhead(lower: float, upper: float, g: float) -> float:
    if upper <= lower:
        return g / 2

    def integral(x: float) -> float:  # of ceil(t/g)*g dt from 0 to x
        k = math.floor(x / g)
        return g * g * k * (k + 1) / 2 + (k + 1) * g * (x - k * g)

    mean_billed = (integral(upper) - integral(lower)) / (upper - lower)
    return max(0.0, mean_billed - (lower + upper) / 2)


# -- costs ---------------------------------------------------------------------------


class CapabilityCost(msgspec.Struct, frozen=True):
    """A capability's share of a model's monthly cost at the measured rate."""

    name: str
    compute: float
    requests: float
    retry_tax: float  # what retried and dead-lettered attempts cost
    fixed: float  # the share of a monthly fee
    total: float


class ModelCost(msgspec.Struct, frozen=True):
    name: str
    kind: str
    description: str
    source: str
    monthly: float  # at the measured rate
    per_million: float  # per million invocations at the measured rate
    compute: float
    requests: float
    fixed: float
    retry_tax: float
    memory_mb: float | None  # serverless: the memory billed
    billed_ms_per_invocation: float | None
    instances: int | None  # container: instances the measured load needs
    capabilities: list[CapabilityCost]


class BreakEven(msgspec.Struct, frozen=True):
    """Loads where a serverless model and a container model cost the same per month."""

    serverless: str
    container: str
    rates: list[float]  # requests/s, ascending; empty when one is always cheaper
    cheaper_at_measured: str


class CostReport(msgspec.Struct, frozen=True):
    run: Run
    currency: str
    month_hours: float
    models: list[ModelCost]
    break_even: list[BreakEven]
    notes: list[str]
    prices: Prices  # the models the figures were computed with


class _Profile(msgspec.Struct, frozen=True):
    """Per invocation averages of the whole app under one model (what scales with load)."""

    billed_seconds: float  # rounded to the model's granularity
    cpu_ms: float  # invocation CPU
    host_cpu_seconds: float  # process CPU per invocation (container sizing)
    memory_mb: float


def _memory_mb(model: Serverless, run: Run) -> float:
    if model.memory_mb != "measured":
        return float(model.memory_mb)
    rss = run.host.max_resident_bytes or run.host.resident_bytes or 0.0
    mb = math.ceil(rss / 2**20 / model.memory_step_mb) * model.memory_step_mb
    return max(mb, model.min_memory_mb, model.memory_step_mb)


def invocation_cpu_seconds(run: Run) -> float:
    """The invocations' CPU seconds, at most the host process's: the per-invocation
    figure is sampled (and a host from before step timing counted what concurrent
    invocations ran meanwhile), and no invocation runs outside the process."""
    cpu = sum(c.cpu_seconds for c in run.capabilities)
    if run.host.cpu_seconds is not None and cpu > run.host.cpu_seconds:
        return run.host.cpu_seconds
    return cpu


def _profile(model: Model, run: Run) -> _Profile:
    granularity = model.billing_ms / 1000 if isinstance(model, Serverless) else 0.001
    billed = sum(billed_seconds(c.latency, c.wall_seconds, granularity) for c in run.capabilities)
    cpu = invocation_cpu_seconds(run)
    host_cpu = run.host.cpu_seconds if run.host.cpu_seconds else cpu
    return _Profile(
        billed_seconds=billed / run.invocations,
        cpu_ms=cpu * 1000 / run.invocations,
        host_cpu_seconds=max(0.0, host_cpu) / run.invocations,
        memory_mb=_memory_mb(model, run) if isinstance(model, Serverless) else 0.0,
    )


def container_instances(model: Container, rate: float, cpu_seconds_per_invocation: float) -> int:
    """Instances an always-on deployment needs at ``rate`` invocations/s."""
    busy = rate * cpu_seconds_per_invocation / (model.vcpus * model.utilisation)
    return max(model.min_instances, math.ceil(busy - 1e-9))


def _parts(model: Model, profile: _Profile, rate: float, month_hours: float) -> dict[str, float]:
    """Monthly cost at ``rate`` invocations/s as {fixed, requests, compute}."""
    month = month_hours * 3600
    if isinstance(model, Container):
        instances = container_instances(model, rate, profile.host_cpu_seconds)
        hourly = model.vcpus * model.per_vcpu_hour + model.memory_gb * model.per_gb_hour
        hourly += model.per_hour
        return {"fixed": 0.0, "requests": 0.0, "compute": instances * hourly * month_hours}
    count = rate * month
    gb_seconds = count * profile.billed_seconds * profile.memory_mb / 1024
    cpu_ms = count * profile.cpu_ms
    return {
        "fixed": model.per_month,
        "requests": max(0.0, count - model.included_requests) * model.per_million_requests / 1e6,
        "compute": max(0.0, gb_seconds - model.included_gb_seconds) * model.per_gb_second
        + max(0.0, cpu_ms - model.included_cpu_ms) * model.per_million_cpu_ms / 1e6,
    }


def monthly_cost(model: Model, run: Run, rate: float, *, month_hours: float = 730.0) -> float:
    """What the app would cost per month under ``model`` at ``rate`` invocations/s,
    with the measured mix of capabilities and durations."""
    return sum(_parts(model, _profile(model, run), rate, month_hours).values())


def break_even(
    serverless: Serverless,
    container: Container,
    run: Run,
    *,
    month_hours: float = 730.0,
    low: float = 1e-4,
    high: float = 1e6,
) -> list[float]:
    """Loads (invocations/s) in [low, high] where the cheaper of the two changes."""
    s_profile, c_profile = _profile(serverless, run), _profile(container, run)

    def gap(rate: float) -> float:
        s = sum(_parts(serverless, s_profile, rate, month_hours).values())
        c = sum(_parts(container, c_profile, rate, month_hours).values())
        return s - c

    steps = 60 * max(1, round(math.log10(high / low)))
    grid = [low * (high / low) ** (i / steps) for i in range(steps + 1)]
    out: list[float] = []
    previous = gap(grid[0])
    for a, b in itertools.pairwise(grid):
        current = gap(b)
        if (previous <= 0) != (current <= 0):
            lo, hi = a, b
            for _ in range(80):
                mid = math.sqrt(lo * hi)
                if (gap(mid) <= 0) == (previous <= 0):
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        previous = current
    return out


def cost_report(run: Run, prices: Prices) -> CostReport:
    """Every model's cost of ``run`` at its measured rate, and the break-even loads."""
    models = [
        _model_cost(name, model, run, prices.month_hours) for name, model in prices.models.items()
    ]
    by_name = {m.name: m for m in models}
    pairs: list[BreakEven] = []
    for s_name, s_model in prices.models.items():
        if not isinstance(s_model, Serverless):
            continue
        for c_name, c_model in prices.models.items():
            if not isinstance(c_model, Container):
                continue
            rates = break_even(s_model, c_model, run, month_hours=prices.month_hours)
            cheaper = s_name if by_name[s_name].monthly <= by_name[c_name].monthly else c_name
            pairs.append(BreakEven(s_name, c_name, rates, cheaper))
    cpu = sum(c.cpu_seconds for c in run.capabilities)
    capped = []
    if run.host.cpu_seconds is not None and cpu > run.host.cpu_seconds:
        capped.append(
            f"the invocations' CPU ({cpu:.2f} s) is more than the process's "
            f"({run.host.cpu_seconds:.2f} s): the per-invocation CPU is sampled (or the host "
            "counted what concurrent invocations ran meanwhile); CPU prices use the "
            "process's CPU, split by the invocations' shares"
        )
    notes = [
        *run.notes,
        *capped,
        "billed duration per invocation is estimated from the latency histogram's buckets "
        "(uniform within a bucket), rounded up to each model's billing_ms",
        "retry tax: each capability's share of attempts that were retried (nak, or a "
        "retry answer) or dead-lettered, times its cost; attempts are not timed by outcome",
        "memory 'measured' is the host's peak resident memory (under --workers, the largest "
        "worker's; every capability bills at it), rounded up to the model's memory step",
        "container sizing: the host's process CPU per invocation (HTTP and NATS work "
        "included) at the model's target utilisation",
        f"a month is {prices.month_hours:g} hours; prices are the price file's, not quotes",
    ]
    return CostReport(
        run=run,
        currency=prices.currency,
        month_hours=prices.month_hours,
        models=models,
        break_even=pairs,
        notes=notes,
        prices=prices,
    )


def billing_detail(report: CostReport, name: str) -> str:
    """What model ``name`` bills per invocation, in words: GB-seconds, CPU, instances."""
    model = report.prices.models[name]
    cost = next(m for m in report.models if m.name == name)
    if isinstance(model, Container):
        return f"{cost.instances} instance{'s' if cost.instances != 1 else ''}"
    parts = []
    if model.per_gb_second:
        parts.append(f"{cost.memory_mb:g} MB x {cost.billed_ms_per_invocation:.2f} ms billed")
    if model.per_million_cpu_ms:
        cpu = invocation_cpu_seconds(report.run) / report.run.invocations
        parts.append(f"{cpu * 1000:.2f} ms CPU")
    return ", ".join(parts) + " per invocation" if parts else "requests only"


def _model_cost(name: str, model: Model, run: Run, month_hours: float) -> ModelCost:
    profile = _profile(model, run)
    parts = _parts(model, profile, run.per_second, month_hours)
    monthly = sum(parts.values())
    invocations_per_month = run.per_second * month_hours * 3600
    capabilities = _split(model, run, parts, profile)
    serverless = isinstance(model, Serverless)
    return ModelCost(
        name=name,
        kind="serverless" if serverless else "container",
        description=model.description,
        source=model.source,
        monthly=monthly,
        per_million=monthly / invocations_per_month * 1e6,
        compute=sum(c.compute for c in capabilities),
        requests=sum(c.requests for c in capabilities),
        fixed=parts["fixed"],
        retry_tax=sum(c.retry_tax for c in capabilities),
        memory_mb=profile.memory_mb if serverless else None,
        billed_ms_per_invocation=profile.billed_seconds * 1000 if serverless else None,
        instances=None
        if isinstance(model, Serverless)
        else container_instances(model, run.per_second, profile.host_cpu_seconds),
        capabilities=capabilities,
    )


def _split(
    model: Model, run: Run, parts: Mapping[str, float], profile: _Profile
) -> list[CapabilityCost]:
    """The app's monthly parts apportioned to capabilities by what each used of them."""
    caps = run.capabilities
    invocations = [float(c.invocations) for c in caps]
    if isinstance(model, Container):
        compute_use = [c.cpu_seconds for c in caps]
    else:
        granularity = model.billing_ms / 1000
        gb = profile.memory_mb / 1024
        measured = sum(c.cpu_seconds for c in caps)
        scale = invocation_cpu_seconds(run) / measured if measured > 0 else 0.0
        compute_use = [
            billed_seconds(c.latency, c.wall_seconds, granularity) * gb * model.per_gb_second
            + c.cpu_seconds * scale * 1000 * model.per_million_cpu_ms / 1e6
            for c in caps
        ]
        if not any(compute_use):  # a model with no compute price: split by billed time
            compute_use = [c.wall_seconds for c in caps]
    compute_shares = _shares(compute_use, invocations)
    request_shares = _shares(invocations, invocations)
    out = []
    for index, c in enumerate(caps):
        compute = parts["compute"] * compute_shares[index]
        requests = parts["requests"] * request_shares[index]
        fixed = parts["fixed"] * request_shares[index]
        tax_share = c.retry_tax_invocations / c.invocations if c.invocations else 0.0
        tax = (compute + requests) * tax_share
        out.append(
            CapabilityCost(
                name=c.name,
                compute=compute * (1 - tax_share),
                requests=requests * (1 - tax_share),
                retry_tax=tax,
                fixed=fixed,
                total=compute + requests + fixed,
            )
        )
    return out


def _shares(use: list[float], fallback: list[float]) -> list[float]:
    total = sum(use)
    if total <= 0:
        use, total = fallback, sum(fallback)
    return [u / total if total > 0 else 0.0 for u in use]
