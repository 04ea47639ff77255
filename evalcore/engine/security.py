"""What protects a run, decided once before any work starts, recorded in run.json ("security") and
shown by `evalcore eval` and in reports:

* code_sandbox: how model-written code runs (datasets with allow_code_execution only):
  "namespaces" (the OS sandbox, evalcore/scoring/sandbox.py) or "guard" (the weak Python-level guard,
  only with `unsafe_allow_weak_sandbox = true` and only where the OS sandbox is unavailable).
  Without the opt-in, a host with no OS sandbox is refused (exit 2) with what is missing.
* offline: "netns" (local workers in a loopback-only network namespace, evalcore/isolation/netns.py, plus
  the Python socket guard), "guard" (the Python socket guard alone, with the reason), or "off".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from evalcore.errors import PlanError

Problem = Callable[[], "str | None"]


def decide(plan, tasks: Mapping, *, workers_off_host: str | None = None, sandbox_problem: Problem | None = None,
           netns_problem: Problem | None = None) -> dict[str, str]:
    """The run's security settings. `tasks`: abbr -> Task. `workers_off_host`: None when the
    runner starts its workers on this host (a network namespace applies), else why it does not
    (its runner spec says: evalcore.runners.registry). The checks are injectable for tests; by
    default they run the real probes (each starts one small process)."""
    from evalcore.errors import SandboxUnavailable

    if sandbox_problem is None:
        from evalcore.scoring.sandbox import sandbox_problem
    if netns_problem is None:
        from evalcore.isolation.netns import netns_problem
    out: dict[str, str] = {}
    execs = [d.abbr for d in plan.datasets if tasks[d.abbr].needs_execution and d.allow_code_execution]
    weak_ok = plan.run.unsafe_allow_weak_sandbox
    if weak_ok and not execs:
        raise PlanError("unsafe_allow_weak_sandbox is set, but no dataset of the plan runs generated code",
                        hint="remove it: it only matters for datasets with allow_code_execution = true")
    if execs:
        problem = sandbox_problem()
        if problem is None:
            out["code_sandbox"] = "namespaces"
        elif weak_ok:
            out["code_sandbox"] = "guard"
            out["code_sandbox_reason"] = problem
        else:
            raise SandboxUnavailable(f"refusing to run generated code ({', '.join(execs)}): the OS sandbox is "
                                     f"not available on this host: {problem}")
    if not plan.run.offline:
        out["offline"] = "off"
    elif workers_off_host is not None:
        out["offline"] = "guard"
        out["offline_reason"] = workers_off_host
    else:
        problem = netns_problem()
        out["offline"] = "netns" if problem is None else "guard"
        if problem is not None:
            out["offline_reason"] = f"no network namespace for the workers: {problem}"
    return out


def describe(security: Mapping[str, str]) -> list[str]:
    """One line per setting, for `evalcore eval` (stderr)."""
    lines = []
    offline = security.get("offline")
    if offline == "netns":
        lines.append("offline: enforced by the kernel (workers in a loopback-only network namespace) "
                     "and the Python socket guard")
    elif offline == "guard":
        lines.append(f"offline: Python socket guard only ({security.get('offline_reason', '')})")
    code = security.get("code_sandbox")
    if code == "namespaces":
        lines.append("generated code: OS sandbox (bubblewrap namespaces, rlimits)")
    elif code == "guard":
        lines.append(warning(security))
    return lines


def warning(security: Mapping[str, str]) -> str:
    return ("WARNING: generated code is run under the WEAK Python guard, not an OS sandbox "
            f"(unsafe_allow_weak_sandbox = true; {security.get('code_sandbox_reason', '')}); "
            "code written to escape can reach this host")


def report_notes(security: Mapping[str, str]) -> list[str]:
    """What a report must say about how the run was protected: only what is weaker than usual."""
    notes = []
    if security.get("code_sandbox") == "guard":
        notes.append(warning(security))
    if security.get("offline") == "guard":
        notes.append(f"note: offline was enforced by the Python socket guard only ({security.get('offline_reason', '')})")
    return notes
