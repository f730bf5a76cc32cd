"""Identity: resolve any identifier, look a person up, the merge log, split, and erase."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query
from pydantic import BaseModel, Field

from sendflowr.api.auth import AdminOnly
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import (
    TENANT_PATTERN,
    IdentifierOut,
    MergeOut,
    ProfileOut,
    SplitIn,
    SplitOut,
)
from sendflowr.errors import InvalidInputError, NotFoundError
from sendflowr.identity.erasure import erase_person
from sendflowr.identity.identifiers import Identifier, IdentifierError, parse_lookup
from sendflowr.identity.store import MergeRecord, Profile
from sendflowr.people import split_merge
from sendflowr.runtime import Runtime

router = APIRouter(prefix="/api/identity", tags=["identity"])

TenantQuery = Query(pattern=TENANT_PATTERN, description="the brand")
UID_PATTERN = r"^sf_[0-9a-f]{16}$"
MAX_ROW_ID = 2**63 - 1  # a 64-bit row id: larger numbers overflow the database driver


def _ident(i: Identifier) -> IdentifierOut:
    return IdentifierOut(type=i.kind, value=i.value)


def _merge(m: MergeRecord) -> MergeOut:
    return MergeOut(
        id=m.id,
        status=m.status,
        survivor=m.survivor,
        merged=m.merged,
        identifiers=[_ident(i) for i in m.identifiers],
        reason=m.reason,
        occurrences=m.occurrences,
        source_event_id=m.source_event_id,
        created_at=m.created_at,
        split_at=m.split_at,
    )


def _profile(tenant: str, p: Profile) -> ProfileOut:
    return ProfileOut(
        tenant=tenant,
        universal_id=p.universal_id,
        identifiers=[_ident(i) for i in p.identifiers],
        aliases=p.aliases,
        created_at=p.created_at,
        recent_merges=[_merge(m) for m in p.merges],
    )


def resolve_identifier(runtime: Runtime, tenant: str, id_type: str, value: str) -> str:
    """Any identifier (email, phone, klaviyo_id, esp:<name>, external:<name>, anonymous,
    universal_id) -> the person's current universal id; 422 for a bad one, 404 if unknown."""
    runtime.metadata.get_tenant(tenant)
    if id_type == "universal_id":
        root = runtime.identity.root(tenant, value)
        if root is None:
            raise NotFoundError(f"no person {value!r} in tenant {tenant!r}", field="value")
        return root
    try:
        ident = parse_lookup(id_type, value, runtime.hash_key, runtime.identity.blocklist)
    except IdentifierError as exc:
        raise InvalidInputError(
            [{"loc": ["query", exc.field], "msg": exc.reason, "type": "value_error"}]
        ) from None
    uid = runtime.identity.owner(tenant, ident)
    if uid is None:
        raise NotFoundError(f"no person with that {id_type} in tenant {tenant!r}", field="value")
    return runtime.identity.root(tenant, uid) or uid


@router.get("/resolve", response_model=ProfileOut)
def resolve(
    runtime: RuntimeDep,
    tenant: str = TenantQuery,
    type: str = Query(
        description="email, phone, klaviyo_id, esp:<name>, external:<name>, anonymous, "
        "universal_id",
        max_length=64,
    ),
    value: str = Query(min_length=1, max_length=320),
) -> ProfileOut:
    uid = resolve_identifier(runtime, tenant, type, value)
    return _profile(tenant, runtime.identity.profile(tenant, uid))


@router.get("/merges", response_model=list[MergeOut])
def merge_log(
    runtime: RuntimeDep,
    tenant: str = TenantQuery,
    status: Literal["merged", "refused", "split"] | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(
        None, ge=1, le=MAX_ROW_ID, description="page: merges with a smaller id"
    ),
) -> list[MergeOut]:
    """Every merge, refusal (with its reason and how often it recurred) and split, newest
    first."""
    runtime.metadata.get_tenant(tenant)
    return [
        _merge(m)
        for m in runtime.identity.merge_log(tenant, status=status, limit=limit, before_id=before)
    ]


@router.post("/merges/{merge_id}/split", response_model=SplitOut)
def split(
    body: SplitIn,
    runtime: RuntimeDep,
    merge_id: int = Path(ge=1, le=MAX_ROW_ID),
    tenant: str = TenantQuery,
) -> SplitOut:
    """Undo a merge: the merged person exists again with the identifiers the merge moved, and
    their events (also those stored since) are re-assigned; features rebuild on next read."""
    runtime.metadata.get_tenant(tenant)
    out = split_merge(
        tenant, merge_id, body.operator, runtime.events, runtime.features, runtime.identity
    )
    return SplitOut(
        merge=_merge(out.split.merge),
        restored_universal_id=out.split.restored,
        identifiers_moved_back=[_ident(i) for i in out.split.moved_back],
        events_moved=out.events_moved,
    )


@router.get("/{universal_id}", response_model=ProfileOut)
def person(
    runtime: RuntimeDep,
    universal_id: str = Path(pattern=UID_PATTERN),
    tenant: str = TenantQuery,
) -> ProfileOut:
    """A person with all identifiers and recent merges (a merged-away id shows the survivor)."""
    uid = resolve_identifier(runtime, tenant, "universal_id", universal_id)
    return _profile(tenant, runtime.identity.profile(tenant, uid))


class ErasedCountsOut(BaseModel):
    identifiers: int = Field(description="identifiers (email hashes, ESP ids, ...) removed")
    profiles: int = Field(description="profiles removed: the person and every id merged in")
    merge_records: int = Field(description="merge-log rows naming the person or an identifier")
    events: int = Field(description="stored events (every alias)")
    explanations: int = Field(description="timing explanations of their decisions")
    triggers: int = Field(description="scheduled, sent or cancelled sends (with addresses)")
    features: int = Field(description="cached feature rows")
    dead_letters: int = Field(description="rejected payloads that named the person")
    archive_rows: int = Field(description="raw archive rows that named the person")
    archive_files: int = Field(description="raw archive files rewritten or, left empty, deleted")


class ErasureOut(BaseModel):
    tenant: str
    universal_id: str = Field(description="the person erased (the survivor, for a merged id)")
    aliases_erased: int = Field(description="ids merged into the person, erased with them")
    schedules_touched: int = Field(description="campaigns that lost triggers (counted there)")
    removed: ErasedCountsOut
    audit_id: int = Field(description="the row in the erasure audit (no personal data)")


@router.delete("/{universal_id}", response_model=ErasureOut, dependencies=[AdminOnly])
def erase(
    runtime: RuntimeDep,
    universal_id: str = Path(pattern=UID_PATTERN),
    tenant: str = TenantQuery,
    actor: Annotated[str, Header(alias="X-SendFlowr-Actor", max_length=200)] = "api",
) -> ErasureOut:
    """Data-subject erasure: the person's identifiers, merge records, events, timing
    explanations, triggers (with their addresses), cached features, and the dead letters and
    raw archive rows naming them, from every store. An id merged into someone erases that
    someone. Not idempotent in its answer: once erased the id is unknown, so a second call is
    404 (the audit row shows the first). Events of the same address arriving later make a
    new, history-less person."""
    runtime.metadata.get_tenant(tenant)
    done = erase_person(
        tenant,
        universal_id,
        actor,
        identity=runtime.identity,
        events=runtime.events,
        features=runtime.features,
        triggers=runtime.triggers,
        metadata=runtime.metadata,
        hash_key=runtime.hash_key,
        archive=runtime.archive,
    )
    runtime.timing.forget_audience(tenant)  # other processes: within decisions.ERASURE_CHECK_S
    return ErasureOut(
        tenant=tenant,
        universal_id=done.universal_id,
        aliases_erased=done.aliases,
        schedules_touched=done.schedules_touched,
        removed=ErasedCountsOut(**done.removed),
        audit_id=done.audit_id,
    )
