"""Which coordd of a set on one PostgreSQL acts: a lease row with an epoch (docs/postgresql.md).

The leader renews `leader` (id 1) well within `lease_s`, by the database's clock; a standby
takes the row over once it expired, adding one to the epoch. Every write the leader makes
first reads the row FOR SHARE (Store.guard) and is refused unless the epoch is still its own:
a takeover's update waits for the writes in flight, and no write of an older epoch lands
after it. A leader that could not renew in time stops acting before its lease can have
expired (it exits: what it holds in memory is then never trusted again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from contract.errors import Fenced

log = structlog.get_logger("coordinator.leadership")

NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
CLAIM = sa.text(f"""
    INSERT INTO leader (id, epoch, holder, address, renewed_at, expires_at)
    SELECT 1, 1, :me, :address, {NOW}, {NOW} + :lease
    ON CONFLICT (id) DO UPDATE SET
        epoch = CASE WHEN leader.holder = :me AND leader.epoch = :epoch THEN leader.epoch
                     ELSE leader.epoch + 1 END,
        holder = EXCLUDED.holder, address = EXCLUDED.address,
        renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at
    WHERE (leader.holder = :me AND leader.epoch = :epoch)
       OR leader.expires_at < EXCLUDED.renewed_at
    RETURNING epoch""")
SEEN = sa.text(f"""
    INSERT INTO members (id, address, started_at, seen_at) VALUES (:me, :address, {NOW}, {NOW})
    ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, seen_at = EXCLUDED.seen_at""")
# Members count while seen within two leases.
LOOK = sa.text(f"""
    SELECT epoch, address, {NOW} - renewed_at AS age, expires_at > {NOW} AS live,
           (SELECT count(*) FROM members WHERE seen_at > {NOW} - 2 * :lease) AS members,
           (SELECT string_agg(address, ',' ORDER BY started_at) FROM members
            WHERE seen_at > {NOW} - 2 * :lease) AS addresses
    FROM leader WHERE id = 1""")
RELEASE = sa.text(f"""
    UPDATE leader SET expires_at = {NOW} - 1 WHERE id = 1 AND holder = :me AND epoch = :epoch""")
# FOR SHARE: a takeover (an update of this row) waits until this write has committed. The
# idle timeout ends a transaction its coordd stopped in (SIGSTOP, cut off), releasing the row.
GUARD = sa.text("SELECT epoch, set_config('idle_in_transaction_session_timeout', :ms, true) "
                "FROM leader WHERE id = 1 FOR SHARE")
# A renewal that has not succeeded this far into the lease makes the leader stop acting.
STEP_DOWN_AT = 0.8
RENEWALS_PER_LEASE = 4


@dataclasses.dataclass(frozen=True)
class Seen:
    epoch: int = 0
    lease_age_s: float = 0.0
    members: int = 0
    at: float = 0.0  # monotonic
    addresses: str = ""  # of the members, comma-separated


@dataclasses.dataclass
class LeaderView:
    """What `coordd status` and the metrics show."""

    epoch: int
    holder: str
    address: str
    lease_age_s: float
    expires_in_s: float
    members: list[tuple[str, str, float]]  # id, address, seconds since it was last seen


class Leadership:
    def __init__(self, engine: AsyncEngine, me: str, address: str, lease_s: float):
        self.engine, self.me, self.address, self.lease_s = engine, me, address, lease_s
        self.epoch: int | None = None
        self.leader_address = ""  # the current leader's, for a standby's answers
        self.valid_until = 0.0    # monotonic: act only before this
        self.seen = Seen()        # the lease as last read, for the metrics
        # Told `valid_until` after each renewal (the Lighthouses serve no longer than that).
        self.renewed: Callable[[float], None] = lambda until: None

    def addresses(self) -> str:
        """What agents get to reach the set: this coordd first, then the other members."""
        others = [a for a in self.seen.addresses.split(",") if a and a != self.address]
        return ",".join([self.address, *others])

    def lease_age(self) -> float:
        return self.seen.lease_age_s + time.monotonic() - self.seen.at if self.seen.at else 0.0

    async def _claim(self) -> int | None:
        params = {"me": self.me, "address": self.address, "lease": self.lease_s,
                  "epoch": self.epoch if self.epoch is not None else -1}
        async with self.engine.begin() as conn:
            await conn.execute(SEEN, params)
            epoch = (await conn.execute(CLAIM, params)).scalar()
            seen = (await conn.execute(LOOK, {"lease": self.lease_s})).first()
        # A lease run out names nobody: its holder is gone, and a client sent there would
        # find a closed port instead of the next leader.
        self.leader_address = seen.address if seen and seen.live else ""
        if seen:
            self.seen = Seen(seen.epoch, seen.age, seen.members, time.monotonic(),
                             seen.addresses or "")
        return epoch

    async def campaign(self) -> int:
        """Wait until this coordd leads; its epoch."""
        while True:
            started = time.monotonic()
            try:
                epoch = await asyncio.wait_for(self._claim(), self.lease_s)
            except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
                log.warning("leadership.unreachable", error=str(exc)[:200])
                epoch = None
            if epoch is not None:
                self.epoch, self.leader_address = epoch, self.address
                self.valid_until = started + self.lease_s * STEP_DOWN_AT
                log.info("leadership.acquired", epoch=epoch, member=self.me)
                return epoch
            await asyncio.sleep(self.lease_s / RENEWALS_PER_LEASE)

    async def hold(self, on_lost: Callable[[str], None]) -> None:
        """Renew until the lease is lost, then call `on_lost(why)` once: at the latest when
        STEP_DOWN_AT of a lease has passed since the last renewal began."""
        while True:
            await asyncio.sleep(self.lease_s / RENEWALS_PER_LEASE)
            started = time.monotonic()
            if started < self.valid_until:
                try:
                    epoch = await asyncio.wait_for(self._claim(), self.valid_until - started)
                except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
                    log.warning("leadership.renew_failed", error=str(exc)[:200])
                else:
                    if epoch != self.epoch:
                        return on_lost(f"another coordd took over (epoch {epoch})")
                    self.valid_until = started + self.lease_s * STEP_DOWN_AT
                    self.renewed(self.valid_until)
                    continue
            if time.monotonic() >= self.valid_until:
                return on_lost("no renewal within the lease (cut off, frozen or too slow)")

    async def release(self) -> None:
        """A clean stop: end this coordd's lease now, so that a standby leads at its next
        claim instead of when the lease would have run out."""
        if self.epoch is None:
            return
        self.valid_until = 0.0
        try:
            async with self.engine.begin() as conn:
                await conn.execute(RELEASE, {"me": self.me, "epoch": self.epoch})
        except (OSError, sa.exc.DBAPIError) as exc:  # the lease then runs out by itself
            log.warning("leadership.release_failed", error=str(exc)[:200])
        else:
            log.info("leadership.released", epoch=self.epoch, member=self.me)

    def acting(self) -> bool:
        return self.epoch is not None and time.monotonic() < self.valid_until

    async def guard(self, conn: AsyncConnection) -> None:
        """Store.guard: refuse the write unless this coordd still leads."""
        ms = str(int(self.lease_s * 1000))
        row = (await conn.execute(GUARD, {"ms": ms})).first()
        if row is None or row.epoch != self.epoch or not self.acting():
            raise Fenced(f"this coordd no longer leads (its epoch {self.epoch}, the database's "
                         f"{row.epoch if row else None}): write refused")


async def view(engine: AsyncEngine) -> LeaderView | None:
    """The lease and the members as the database sees them now; None before any leader."""
    async with engine.connect() as conn:
        now = (await conn.execute(sa.text(f"SELECT {NOW}"))).scalar()
        row = (await conn.execute(sa.text("SELECT * FROM leader WHERE id = 1"))).first()
        members = (await conn.execute(sa.text(
            "SELECT id, address, seen_at FROM members ORDER BY started_at"))).all()
    if row is None:
        return None
    return LeaderView(row.epoch, row.holder, row.address, now - row.renewed_at,
                      row.expires_at - now, [(m.id, m.address, now - m.seen_at) for m in members])


async def read_view(url: str) -> LeaderView | None:
    engine = create_async_engine(url)
    try:
        return await view(engine)
    finally:
        await engine.dispose()
