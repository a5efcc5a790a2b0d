"""statekit asset add|list|upload|verify: media files of episodes."""

from __future__ import annotations

import os
import sys

import click
from rich.table import Table

from ..operations import add_asset_file, upload_asset_once, verify_assets
from ..schema import legacy_id
from .app import Context, dump_json, err, fail, group, human_size, out, pass_ctx, ref_arg, split_ref


@group()
def asset() -> None:
    """Media files of episodes (content-addressed: the same bytes are stored once)."""


@asset.command("add")
@ref_arg
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--kind", default="audio", show_default=True, help="What the file is (audio, image, video, ...).")
@click.option("--name", default=None, help="Name in the episode (default: the file's name).")
@click.option("--media-type", default=None, help="e.g. audio/wav (default: guessed from the name).")
@pass_ctx
def asset_add(ctx: Context, ref: str, file: str, kind: str, name: str | None, media_type: str | None) -> None:
    """Store FILE as an asset of SHOW/EP (inside a worker's command, for its
    own episode: under the run's lease)."""
    show, episode = split_ref(ref)
    if os.environ.get("STATEKIT_RUN_ID") and (os.environ.get("STATEKIT_SHOW"), os.environ.get("STATEKIT_EPISODE")) \
            == (show, episode):
        run = ctx.store.attach_run(show, episode, os.environ.get("STATEKIT_STAGE", ""), os.environ["STATEKIT_RUN_ID"])
        added = name or legacy_id(os.path.basename(file))
        ep = run.add_asset(file, kind, added, media_type=media_type)
    else:
        added, ep = add_asset_file(ctx.store, show, episode, file, kind, name, media_type=media_type)
    record = ep.assets[added]
    out.print(f"{ep.key}: asset {added} = sha256 {record.sha256[:12]}… ({human_size(record.size)}, "
              f"{record.media_type}); version {ep.version}", markup=False)


@asset.command("list")
@ref_arg
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def asset_list(ctx: Context, ref: str, as_json: bool) -> None:
    """The assets of SHOW/EP, and where each was uploaded."""
    show_id, ep_id = split_ref(ref)
    ep = ctx.store.get(show_id, ep_id)
    if as_json:
        dump_json({name: {**r.model_dump(mode="json"), "path": ctx.store.asset_path(show_id, ep_id, name),
                          "upload": ep.uploads[name].model_dump(mode="json") if name in ep.uploads else None}
                   for name, r in ep.assets.items()})
        return
    if not ep.assets:
        err.print(f"{ep.key} has no assets", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "kind", "size", "media type", "sha256", "uploaded to"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for name, r in sorted(ep.assets.items()):
        table.add_row(name, r.kind, human_size(r.size), r.media_type, r.sha256[:12] + "…",
                      ep.uploads[name].url if name in ep.uploads else "")
    out.print(table, markup=False)


@asset.command("upload")
@ref_arg
@click.argument("name")
@click.option("--thumbnail", default=None, metavar="NAME", help="An image asset to upload beside it as thumbnail.jpg.")
@pass_ctx
def asset_upload(ctx: Context, ref: str, name: str, thumbnail: str | None) -> None:
    """Upload asset NAME of SHOW/EP to the bucket in statekit.yaml's gcs: settings
    (audio/<uuid>/audio.<ext>), once: a repeat finds the same object and writes nothing."""
    show_id, ep_id = split_ref(ref)
    store = ctx.store
    if store.config.gcs is None:
        fail("this store has no 'gcs:' settings; add e.g. 'gcs: {bucket: my-bucket}' to statekit.yaml")
    try:
        from ..gcs import GCSUploader  # google-cloud-storage is an optional extra: imported only to upload
    except ImportError:
        fail("uploads need google-cloud-storage: pip install 'statekit[gcs]'")
    uploader = GCSUploader.from_config(store.config.gcs)
    ep, wrote = upload_asset_once(store, show_id, ep_id, name, uploader, thumbnail=thumbnail)
    for n in [name] + ([thumbnail] if thumbnail else []):
        verb = "uploaded" if wrote else "already at"
        out.print(f"{ep.key}: {n} {verb} {ep.uploads[n].url} (generation {ep.uploads[n].generation})", markup=False)


@asset.command("verify")
@ref_arg
@click.argument("name", required=False)
@pass_ctx
def asset_verify(ctx: Context, ref: str, name: str | None) -> None:
    """Hash the assets of SHOW/EP (or only NAME); exit 1 if one is missing or changed."""
    bad = 0
    for check in verify_assets(ctx.store, *split_ref(ref), name):
        if check.path is None:
            bad += 1
            out.print(f"damaged {check.name}: {check.problem}", markup=False)
        else:
            out.print(f"ok      {check.name} ({os.path.relpath(check.path, ctx.store.root)})", markup=False)
    if bad:
        sys.exit(1)

COMMANDS = [asset]
