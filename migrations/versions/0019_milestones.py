"""Loyalty milestones: the program's `milestones` and rewards of kind `milestone`.

`rewards.kind` is `referral` (every reward so far: a friend's first purchase) or `milestone` (the
referrer's Nth converted friend, N in `milestone_friends`). The partial unique index of one live
reward per referral and beneficiary now holds for referral rewards only (a milestone reward
shares the referral of the conversion that reached it), and a new one holds a referrer to one
live milestone reward per milestone. `program.milestones` is a JSON list, empty by default.

A downgrade is refused while milestone rewards exist: the schema before this one cannot hold
them beside their referral's own reward, and dropping them would take money off the ledger.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30 17:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

LIVE = "status <> 'reversed'"
LIVE_REFERRAL = "kind = 'referral' AND status <> 'reversed'"
LIVE_MILESTONE = "kind = 'milestone' AND status <> 'reversed'"
MILESTONE_SHAPE = (
    "(kind = 'referral' AND milestone_friends IS NULL) OR "
    "(kind = 'milestone' AND beneficiary = 'referrer' AND milestone_friends >= 1)"
)


def _live_index(name: str, columns: list[str], where: str) -> None:
    op.create_index(
        name,
        "rewards",
        columns,
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade():
    # the index goes before SQLite's rebuild of the table, which would copy it without its WHERE
    op.drop_index("uq_rewards_live_referral_beneficiary", table_name="rewards")
    with op.batch_alter_table("rewards", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=10), nullable=False, server_default="referral")
        )
        batch_op.add_column(sa.Column("milestone_friends", sa.Integer(), nullable=True))
        batch_op.create_check_constraint("kind", "kind IN ('referral', 'milestone')")
        batch_op.create_check_constraint("milestone", MILESTONE_SHAPE)
    _live_index(
        "uq_rewards_live_referral_beneficiary", ["referral_id", "beneficiary"], LIVE_REFERRAL
    )
    _live_index("uq_rewards_live_milestone", ["customer_id", "milestone_friends"], LIVE_MILESTONE)
    with op.batch_alter_table("program", schema=None) as batch_op:
        batch_op.add_column(sa.Column("milestones", sa.JSON(), nullable=False, server_default="[]"))


def downgrade():
    granted = (
        op.get_bind()
        .execute(sa.text("SELECT COUNT(*) FROM rewards WHERE kind = 'milestone'"))
        .scalar()
    )
    if granted:
        raise RuntimeError(
            f"{granted} milestone rewards exist: the schema before 0019 cannot hold them. "
            "Settle and delete them first if the downgrade is really meant."
        )
    with op.batch_alter_table("program", schema=None) as batch_op:
        batch_op.drop_column("milestones")
    op.drop_index("uq_rewards_live_milestone", table_name="rewards")
    op.drop_index("uq_rewards_live_referral_beneficiary", table_name="rewards")
    with op.batch_alter_table("rewards", schema=None) as batch_op:
        batch_op.drop_constraint("milestone", type_="check")
        batch_op.drop_constraint("kind", type_="check")
        batch_op.drop_column("milestone_friends")
        batch_op.drop_column("kind")
    _live_index("uq_rewards_live_referral_beneficiary", ["referral_id", "beneficiary"], LIVE)
