"""The ``file`` plugin kind: inject the files the plugin artifact carries.

Without options every artifact file is put into the package at its title (replacing a
same-named file). With ``files`` only the listed actions run, in order: put a file at a
chosen path, or apply a JSON file as an RFC 7396 merge patch to the descriptor or to a
JSON file of the package."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from packer.package import Package, PackageError, PackageFile, validate_path
from packer.plugin import PluginArtifact, PluginContext, PluginEnv, PluginError, options_model

from .archive import UNPACK_ANNOTATION, expand
from .mergepatch import merge_patch

__all__ = ["FileAction", "FileOptions", "FilePlugin", "setup"]

DESCRIPTOR = "descriptor"


class FileAction(BaseModel):
    """One action: ``source`` (a file of the artifact) put at ``path``, or merged into ``merge_patch``."""

    model_config = ConfigDict(extra="forbid")

    source: str
    path: str | None = None
    merge_patch: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> "FileAction":
        if self.path is not None and self.merge_patch is not None:
            raise ValueError("give either path or merge_patch, not both")
        return self


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[FileAction] | None = None


@dataclass(frozen=True)
class _Put:
    source: PackageFile
    path: str


@dataclass(frozen=True)
class _Merge:
    source: PackageFile
    patch: Any
    target: str  # "descriptor" or a package path


class FilePlugin:
    def __init__(self, artifact: PluginArtifact, actions: list[_Put | _Merge]) -> None:
        self.artifact = artifact
        self.actions = actions

    async def apply(self, package: Package, context: PluginContext) -> Package:
        for action in self.actions:
            try:
                if isinstance(action, _Merge):
                    self._merge(package, action)
                elif action.source.annotations.get(UNPACK_ANNOTATION) == "true":
                    files = await asyncio.to_thread(expand, action.source.data, action.path, context.cap)
                    for path, data in files.items():
                        package.put(path, data)
                else:
                    package.put(action.path, action.source.data, action.source.media_type,
                                {k: v for k, v in action.source.annotations.items() if k != UNPACK_ANNOTATION})
            except PackageError as exc:
                raise PluginError(f"{action.source.path}: {exc.reason}") from None
        return package

    @staticmethod
    def _merge(package: Package, action: _Merge) -> None:
        if action.target == DESCRIPTOR:
            result = merge_patch(package.descriptor, action.patch)
            if not isinstance(result, dict):
                raise PluginError(f"{action.source.path}: merge patch would make the descriptor a non-object")
            package.descriptor = result
            return
        current = package.files.get(action.target)
        document: Any = None
        if current is not None:
            try:
                document = json.loads(current.data)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PluginError(f"{action.source.path}: merge target {action.target} is not JSON: {exc}") from None
        merged = merge_patch(document, action.patch)
        package.put(action.target, (json.dumps(merged, ensure_ascii=False, indent=2) + "\n").encode())


def _load_patch(file: PackageFile, artifact: PluginArtifact) -> Any:
    try:
        return json.loads(file.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PluginError(f"{artifact.ref}: {file.path} is not valid JSON: {exc}") from None


def setup(artifact: PluginArtifact, env: PluginEnv) -> FilePlugin:
    """Validate the options against the artifact's files; nothing is read at apply time."""
    options: FileOptions = options_model(FileOptions, artifact)
    if options.files is None:
        return FilePlugin(artifact, [_Put(f, f.path) for _, f in sorted(artifact.files.items())])
    actions: list[_Put | _Merge] = []
    for i, item in enumerate(options.files):
        source = artifact.files.get(item.source)
        if source is None:
            raise PluginError(f"{artifact.ref}: files[{i}].source: the artifact has no file {item.source!r}")
        try:
            if item.merge_patch is not None:
                target = item.merge_patch
                if target != DESCRIPTOR:
                    validate_path(target, f"files[{i}].merge_patch")
                actions.append(_Merge(source, _load_patch(source, artifact), target))
            else:
                actions.append(_Put(source, validate_path(item.path or item.source, f"files[{i}].path")))
        except PackageError as exc:
            raise PluginError(f"{artifact.ref}: {exc.reason}") from None
    return FilePlugin(artifact, actions)
