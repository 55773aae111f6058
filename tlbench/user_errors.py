"""One line for the mistakes a user makes before tlbench's own validation runs, and for the file system
refusing a write: Hydra's composition errors (misspelled key, unknown group option, bad override
syntax) and OSErrors such as a read-only folder or a full disk. Anything else is not described (None),
so a real bug keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Any, Optional

from .errors import one_line
from .suggestions import closest, unknown_key

#: errno values that mean "the machine refused", not "tlbench has a bug".
_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "the folder is not writable (run from a writable folder or point hydra.run.dir, checkpoint_dir and tracking.uri elsewhere)",
    errno.EPERM: "not permitted (run from a writable folder or point hydra.run.dir, checkpoint_dir and tracking.uri elsewhere)",
    errno.EROFS: "the file system is read-only (run from a writable folder or point hydra.run.dir, checkpoint_dir and tracking.uri elsewhere)",
    errno.ENOSPC: "the disk is full (free space, or point checkpoint_dir/hydra.run.dir to another disk)",
    errno.EDQUOT: "the disk quota is exceeded (free space, or point checkpoint_dir/hydra.run.dir to another disk)",
    errno.EFBIG: "the file is larger than this process may write (file-size limit or full disk)",
}


def describe_os_error(exc: BaseException) -> Optional[str]:
    """One line for an OSError the environment caused (permissions, read-only or full disk), else None."""
    if not isinstance(exc, OSError) or exc.errno not in _ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else ""
    return f"cannot write {where!s}: {exc.strerror}; {_ENVIRONMENT_ERRNOS[exc.errno]}".replace("cannot write : ", "cannot write: ")


#: Less free space than this on a run's disk counts as full.
FULL_DISK_BYTES = 1 << 20


def full_disk(paths) -> Optional[str]:
    """The first of `paths` whose file system is (nearly) full, else None. Libraries do not always say
    ENOSPC: torch.save on a full disk raises RuntimeError("unexpected pos ...") from its zip writer."""
    import os
    from pathlib import Path

    for path in paths:
        if not path:
            continue
        probe = Path(path).absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            stat = os.statvfs(probe)
        except OSError:
            continue
        if stat.f_bavail * stat.f_frsize < FULL_DISK_BYTES:
            return str(path)
    return None


def _schema_fields(group: str, node: Any) -> list[str]:
    """Field names the group accepts: its dataclass, or the chosen implementation's for registry groups."""
    from . import config

    fixed = {
        "data": config.DataConfig,
        "head": config.HeadConfig,
        "optim": config.OptimConfig,
        "trainer": config.TrainerConfig,
        "tracking": config.TrackingConfig,
    }
    if group in fixed:
        return [f.name for f in dataclasses.fields(fixed[group])]
    registries = _registries()
    registry = registries.get(group)
    if registry is not None and node is not None and registry.key in node:
        try:
            return [f.name for f in dataclasses.fields(registry.entry(str(node[registry.key])).schema)]
        except Exception:  # an unknown implementation: the registry says so later
            return []
    return []


def _registries() -> dict:
    from .adapt import ADAPTERS
    from .backbones import BACKBONES
    from .freeze import SCHEDULES

    return {"adapt": ADAPTERS, "backbone": BACKBONES, "freeze": SCHEDULES}


def _override_value(key: str, overrides: list[str]) -> str:
    for text in overrides:
        name, sep, value = text.partition("=")
        if sep and name.lstrip("+~") == key:
            return value
    return "<value>"


def describe_hydra_error(exc: BaseException, overrides: list[str] = ()) -> Optional[str]:
    """One line for Hydra's composition and override-parsing errors, else None."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(exc, MissingConfigException):
        options = list(getattr(exc, "options", None) or [])
        missing = str(getattr(exc, "missing_cfg_file", "") or "")
        if options and "/" in missing:
            group, _, option = missing.rpartition("/")
            return f"{group}={option}: no such option{closest(option, options)}; Available options in '{group}': {', '.join(options)}"
        return one_line(exc, limit=400)
    cause = exc.__cause__
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        full_key = str(getattr(cause, "full_key", "") or "")
        parent = getattr(cause, "parent_node", None)
        present = [str(k) for k in parent.keys()] if parent is not None and hasattr(parent, "keys") else []
        present = [k for k in present if k != "hydra"]
        group, _, name = full_key.rpartition(".")
        schema = _schema_fields(group, parent) if group and "." not in group else []
        if name in schema and name not in present:  # a real field the chosen yaml does not set
            return f"{full_key}: not set by the chosen {group} config, so it must be added: +{full_key}={_override_value(full_key, list(overrides))}"
        if not full_key:
            return one_line(exc, limit=400)
        where = f"{group} '{parent['name']}'" if group in ("adapt", "backbone", "freeze") and parent is not None and "name" in parent else group
        return unknown_key(full_key, sorted(set(present) | set(schema)), where or "the top level")
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, ValidationError):  # a typed group's field
        key = str(getattr(cause, "full_key", "") or "")
        reason = one_line(cause, limit=400)
        return f"{key}: {reason}" if key else reason
    if isinstance(exc, (OverrideParseException, ConfigCompositionException, HydraException)):
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith("See https://")]
        return "; ".join(line.rstrip(".") for line in lines[:3]) if lines else type(exc).__name__
    return None


def describe(exc: BaseException, overrides: list[str] = ()) -> Optional[str]:
    return describe_hydra_error(exc, overrides) or describe_os_error(exc)
