"""Rich tables for the device commands: the bundle, its emulated self-test, deploys, rollouts,
rollbacks and the service (edgebn.cli.device renders with these)."""

from __future__ import annotations

from edgebn.cli.render import new_table
from edgebn.cli.ui import out
from edgebn.deploy.ansible_engine import Exported
from edgebn.deploy.bundle import BundleResult
from edgebn.deploy.fleet import FleetResult
from edgebn.deploy.policy import RolloutResult
from edgebn.deploy.rows import HostRow
from edgebn.deploy.service import ServedDeploy, ServedRollback
from edgebn.deploy.ssh import RollbackResult
from edgebn.documents import JsonDict


def bundle(result: BundleResult) -> None:
    st = result.selftest
    out.print(f"wrote {result.out}: {', '.join(sorted(result.files))}, manifest.json")
    out.print(f"self-test here: {'passed' if st['passed'] else 'FAILED'} "
              f"({st['samples']} golden inputs, {st['runtime']})")
    if result.signed:
        out.print("signed: manifest.json.sig (devices that trust the key verify it)")
    out.print(f"on the device: python3 {result.out.name}/predict.py --selftest")


def deploy(row: HostRow) -> None:
    """One host's deploy (edgebn.deploy.release.HostRow)."""
    colour = "green" if row.passed else "red"
    was = f" (was {row.previous})" if row.previous else ""
    out.print(f"{row.host}: [{colour}]{row.status.value}[/] {row.release}{was}, "
              f"{row.bytes_sent} bytes sent, {row.seconds:.1f} s")
    st = row.selftest
    if st is not None:
        out.print(f"self-test of the staged release on {row.host}: "
                  f"{'passed' if st.get('passed') else 'FAILED'} ({st.get('runtime')}, NumPy "
                  f"{st.get('numpy')}, {st.get('machine')}, max |diff| "
                  f"{st.get('max_abs_diff'):.3g} "
                  f"{st.get('units')}; signature {st.get('signature', 'unknown')})")
    if row.health is not None:
        out.print(f"health check: {row.health}")
    if row.reason:
        out.print(f"[{colour}]{row.reason}[/]")
    if row.bench is not None:
        out.print(f"on {row.host}: {_bench_line(row.bench)}")
    if row.profile is not None:
        device_profile(row.host, row.profile)


_STATUS_COLOUR = {"deployed": "green", "unchanged": "green", "offline": "yellow",
                  "not_attempted": "yellow", "rolled_back": "red", "failed": "red",
                  "refused": "red"}


def rollout(result: RolloutResult) -> None:
    """A rollout's rows (either engine): one line per host, then what happened in all."""
    sizes = "+".join(map(str, result.batch_sizes))
    table = new_table(f"{len(result.rows)} hosts in batches of {sizes}, {result.engine.value} "
                      "engine, "
                   f"release {result.release}, {result.seconds:.1f} s"
                   + (" (check: nothing changed)" if result.check else ""),
                   ("host", "batch", "status", "previous", "p50 us", "OS", "Python", "runtime",
                    "°C", "seconds", "reason"))
    for r in result.rows:
        dev, lat = r.device, (r.bench or {}).get("latency_us")
        colour = _STATUS_COLOUR[r.status.value]
        table.add_row(r.host, "-" if r.batch is None else str(r.batch),
                      f"[{colour}]{r.status.value}[/]", r.previous or "-",
                      "-" if not lat else f"{lat['p50']:.1f}", dev.os or "-", dev.python or "-",
                      dev.runtime or "-", "-" if dev.temp_c is None else f"{dev.temp_c:.0f}",
                      f"{r.seconds:.1f}", r.reason or dev.thread_warning or "")
    out.print(table)
    for r in result.rows:
        if r.profile is not None:
            device_profile(r.host, r.profile, top=5)
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items() if n)
    budget = (f"; the failure budget ({result.max_failures}) was spent"
              if result.budget_spent else "")
    colour = "green" if result.passed else "red"
    out.print(f"[{colour}]{counts}{budget}[/]")


def exported(result: Exported) -> None:
    out.print(f"wrote {', '.join(result.files)} to {result.dir}; run it with:\n  {result.command}")


def device_profile(host: str, p: JsonDict, top: int = 10) -> None:
    """``deploy --profile``: the device's per-operator times, slowest first."""
    table = new_table(f"{host}: per operator ({p['runtime']}, {p['threads']} threads); sum "
                   f"{p['ops_sum_us']:,.1f} µs beside the whole model's p50 "
                   f"{p['latency_us']['p50']:,.1f} µs", ("#", "op", "µs", "share", "MACs", "note"))
    for r in sorted(p["operators"], key=lambda r: -(r["time_us"] or 0))[:top]:
        table.add_row(str(r["index"]), r["op"], "-" if r["time_us"] is None
                      else f"{r['time_us']:,.1f}",
                      f"{r['share']:.1%}", f"{r['macs']:,}" if r["macs"] else "", r["note"] or "")
    out.print(table)


def _bench_line(b: JsonDict) -> str:
    lat, dev = b["latency_us"], b.get("device", {})
    return (f"p50 {lat['p50']:.1f} us, p90 {lat['p90']:.1f} us, p99 {lat['p99']:.1f} us "
            f"({b['runtime']}, {b['threads']} threads, {dev.get('cpu', '?')}, "
            f"{dev.get('cores', '?')} cores)")


def rollback(result: RollbackResult) -> None:
    out.print(f"{result.host}:{result.path} -> releases/{result.release} (was {result.previous})")


def served(result: ServedDeploy | ServedRollback) -> None:
    """``deploy --service`` (a ServedDeploy) or ``--rollback --service`` (a ServedRollback)."""
    deploy(result.deploy) if isinstance(result, ServedDeploy) else rollback(result.rollback)
    s = result.service
    if s is None:
        out.print("[red]the release did not go live: the service was left as it was[/]")
        return
    where = s.address.get("listen") or s.address.get("socket") or "?"
    if s.error is not None:
        out.print(f"[red]service {s.unit} on {s.host} ({where}): {s.error}[/]", markup=True,
                  highlight=False)
        return
    h = s.health
    out.print(f"service {s.unit} on {s.host} ({where}): serving release {h['release']}, "
              f"self-test passed at load, {h['runtime']}", highlight=False)


def fleet(result: FleetResult) -> None:
    table = new_table(f"{len(result.hosts)} hosts, {result.seconds:.1f} s",
                   ("host", "copied", "self-test", "p50 us", "OS", "Python", "runtime", "°C",
                    "throttled", "seconds", "error"))
    for h in result.hosts:
        row = h.to_json()
        st = {None: "-", True: "[green]passed[/]", False: "[red]FAILED[/]"}[row["selftest"]]
        lat, dev = row["latency_us"], row["device"]
        table.add_row(h.host, "yes" if row["copied"] else "no", st,
                      "-" if not lat else f"{lat['p50']:.1f}", dev["os"] or "-", dev["python"]
                      or "-",
                      dev["runtime"] or "-", "-" if dev["temp_c"] is None
                      else f"{dev['temp_c']:.0f}",
                      {None: "-", True: "[red]yes[/]", False: "no"}[dev["throttled"]],
                      f"{h.seconds:.1f}", h.error or dev["thread_warning"] or "")
    out.print(table)
    for h in result.hosts:
        if h.result is not None and getattr(h.result, "profile", None) is not None:
            device_profile(h.host, h.result.profile, top=5)
    failed = sum(not h.passed for h in result.hosts)
    out.print("[green]all hosts passed[/]" if not failed else f"[red]{failed} host(s) failed[/]")
