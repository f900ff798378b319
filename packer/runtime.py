"""The packer's services built from config, with one start/close lifetime.

``proxy.app`` creates a ``Packer`` beside the registry service and runs ``start``/``close``
from ``cleanup_ctx`` (after storage is open, before it closes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.sandbox import Sandbox
from proxy.cluster import Leases, VersionWatch
from proxy.cluster.versions import CHAINS
from proxy.meta import Database
from proxy.service.events import EventBus
from proxy.service.policy import PolicyChain
from proxy.service.registry import RegistryService

from . import assembly, chains
from . import webhooks
from .cache import LruCache
from .chains import ChainRegistry
from .outbound import Denylist, guarded_session
from .plugin import PluginEnv, PluginStore
from .webhooks import SubscriptionStore, WebhookDelivery

if TYPE_CHECKING:
    from proxy.config import Config

__all__ = ["Packer", "WORK_PREFIXES"]

log = logging.getLogger(__name__)

# Work directories plugin kinds create under the work area; leftovers of a crash are removed.
WORK_PREFIXES = ("job-", "fn-", "probe-")


class Packer:
    def __init__(self, config: "Config", db: Database, registry: RegistryService, events: EventBus,
                 policy: PolicyChain | None = None, *, leases: Leases, versions: VersionWatch) -> None:
        self.config = config
        self.db = db
        self.registry = registry
        self.events = events
        settings = config.assembly
        # Absolute: plugins are told where their files are, whatever the service's cwd.
        self.workdir = Path(settings.workdir or Path(config.metadata.path).parent / "work").absolute()
        deny = Denylist(config.outbound.deny_networks, config.outbound.deny_hosts)
        self.sandbox = Sandbox(config.plugins.sandbox, private=_private_paths(config))
        self.env = PluginEnv(config.plugins, self.workdir, self.sandbox,
                             cache=LruCache(config.plugins.service.cache_bytes), deny=deny)
        self.plugins = PluginStore(registry, settings.plugins_prefix, settings.package_cap)
        self.chains = ChainRegistry(db, config.chains.file, self._check_plugin, settings.generic_prefix,
                                    optional=config.chains.optional)
        self.subscriptions = SubscriptionStore(db, config.webhooks, deny)
        self.webhooks = WebhookDelivery(db, config.webhooks, deny, leases=leases)
        self.assembly = assembly.AssemblyService(db, registry, self.chains, self.plugins, self.env, settings,
                                                 on_emit=self.webhooks.notify, policy=policy, leases=leases)
        # A chain created, changed or deleted, or the chains file reloaded, on any replica.
        versions.on_change(CHAINS, self.chains.refresh)
        self._reloads: set[asyncio.Task[None]] = set()
        self._sighup = False

    async def _check_plugin(self, ref: str) -> None:
        await self.plugins.check(ref, self.env)

    async def start(self) -> None:
        await self.db.migrate("chains", chains.SCHEMA)
        await self.db.migrate("assembly", assembly.SCHEMA)
        await self.db.migrate("webhooks", webhooks.SCHEMA)
        await asyncio.to_thread(self._clean_workdir)
        await self._probe_sandbox()
        self.env.http = guarded_session(self.env.deny)
        await self.chains.start()
        self.events.subscribe(self.assembly.on_event)
        await self.webhooks.start()
        await self.assembly.start()
        self._install_sighup()

    async def close(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self._reloads):
            task.cancel()
        await self.assembly.close()
        await self.webhooks.close()
        if self.env.http is not None:
            await self.env.http.close()

    async def _probe_sandbox(self) -> None:
        if await asyncio.to_thread(self.sandbox.probe, self.workdir):
            log.info("plugin sandbox ready", extra={"bwrap": self.config.plugins.sandbox.bwrap})
        elif self.config.plugins.sandbox.unsafe:
            log.warning("UNSAFE: plugin sandbox unavailable, function and job plugins run unsandboxed",
                        extra={"reason": self.sandbox.error})
        else:
            log.error("plugin sandbox unavailable: function and job plugins are refused",
                      extra={"reason": self.sandbox.error})

    async def sandbox_status(self) -> tuple[str, bool]:
        """For /readyz: the sandbox's state; it never makes the service unready (other plugins work)."""
        return self.sandbox.status, True

    def _clean_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for entry in self.workdir.iterdir():
            if entry.name.startswith(WORK_PREFIXES):
                shutil.rmtree(entry, ignore_errors=True)

    def _install_sighup(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self._reload_logged())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_logged(self) -> None:
        if self.config.chains.file is None:
            log.warning("SIGHUP: no chains file configured")
            return
        try:
            loaded = await self.chains.reload()
            log.info("chains file reloaded", extra={"chains": [c.name for c in loaded]})
        except chains.ChainError as exc:
            log.error("chains file reload rejected; previous chains kept", extra={"error": str(exc)})


def _private_paths(config: "Config") -> list[Path]:
    """What the sandbox must never show: the service's data, keys, secrets and chains."""
    auth = config.auth
    paths = [Path(config.metadata.path).parent, Path(config.storage.path), auth.signing_keys_dir,
             auth.admin_password_file, config.chains.file]
    return [Path(p) for p in paths if p is not None]
