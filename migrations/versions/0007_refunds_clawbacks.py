"""Refunds deduplicated for ever (refund ids), clawbacks netted in part.

`refunds` records each refund applied to an order, unique by (order, refund id). A clawback is
settled by payouts in parts (`clawback_settlements`, their sum in `clawbacks.settled_minor`)
instead of wholly by one payout (`clawbacks.payout_id`, dropped). A reward's referral and
beneficiary are unique among rewards that are not reversed, so that a referral requalified after
its qualifying order was refunded may earn again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LIVE = sa.text("status <> 'reversed'")
# SQLite rebuilds a table to change it, and dropping the old one deletes its rows first, which
# cascades to the rows that reference them (clawbacks of rewards, settlements of clawbacks): the
# clawbacks are kept aside in a plain table while `rewards` and `clawbacks` are rebuilt.
KEEP = "clawbacks_kept_0007"
CLAWBACK_COLUMNS = "id, customer_id, reward_id, amount_minor, currency, created_at"


def upgrade():
    op.create_table(
        "refunds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purchase_id", sa.Integer(), nullable=False),
        sa.Column("refund_id", sa.String(length=128), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_total_minor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_refunds_amount")),
        sa.CheckConstraint("refunded_total_minor >= amount_minor", name=op.f("ck_refunds_total")),
        sa.ForeignKeyConstraint(
            ["purchase_id"],
            ["purchases.id"],
            name=op.f("fk_refunds_purchase_id_purchases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("purchase_id", "refund_id", name="uq_refunds_purchase_refund_id"),
    )

    op.execute(f"CREATE TABLE {KEEP} AS SELECT {CLAWBACK_COLUMNS}, payout_id FROM clawbacks")
    op.execute("DELETE FROM clawbacks")
    with op.batch_alter_table("rewards", schema=None) as batch_op:
        batch_op.drop_constraint("uq_rewards_referral_beneficiary", type_="unique")
    op.create_index(
        "uq_rewards_live_referral_beneficiary",
        "rewards",
        ["referral_id", "beneficiary"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )
    with op.batch_alter_table("clawbacks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settled_minor", sa.BigInteger(), nullable=False))
        batch_op.drop_index("ix_clawbacks_customer_open")
        batch_op.drop_constraint("fk_clawbacks_payout_id_payouts", type_="foreignkey")
        batch_op.drop_column("payout_id")
        batch_op.create_check_constraint(
            "settled", "settled_minor >= 0 AND settled_minor <= amount_minor"
        )
        batch_op.create_index("ix_clawbacks_customer_id", ["customer_id", "id"], unique=False)
        batch_op.create_index("ix_clawbacks_reward_id", ["reward_id"], unique=False)
    # a clawback netted by a payout so far was netted whole by that one payout
    op.execute(
        f"INSERT INTO clawbacks ({CLAWBACK_COLUMNS}, settled_minor) SELECT {CLAWBACK_COLUMNS}, "
        f"CASE WHEN payout_id IS NULL THEN 0 ELSE amount_minor END FROM {KEEP}"
    )
    op.create_table(
        "clawback_settlements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("clawback_id", sa.Integer(), nullable=False),
        sa.Column("payout_id", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_clawback_settlements_amount")),
        sa.ForeignKeyConstraint(
            ["clawback_id"],
            ["clawbacks.id"],
            name=op.f("fk_clawback_settlements_clawback_id_clawbacks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["payout_id"],
            ["payouts.id"],
            name=op.f("fk_clawback_settlements_payout_id_payouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clawback_settlements")),
        sa.UniqueConstraint("clawback_id", "payout_id", name="uq_clawback_settlements_clawback_id"),
    )
    op.create_index(
        "ix_clawback_settlements_payout_id", "clawback_settlements", ["payout_id"], unique=False
    )
    op.execute(
        "INSERT INTO clawback_settlements (clawback_id, payout_id, amount_minor) "
        f"SELECT id, payout_id, amount_minor FROM {KEEP} WHERE payout_id IS NOT NULL"
    )
    op.drop_table(KEEP)


def downgrade():
    # only a clawback settled whole keeps a payout (the last one that took part of it)
    op.execute(
        f"CREATE TABLE {KEEP} AS SELECT {CLAWBACK_COLUMNS}, CASE WHEN settled_minor = "
        "amount_minor THEN (SELECT max(s.payout_id) FROM clawback_settlements s WHERE "
        "s.clawback_id = clawbacks.id) END AS payout_id FROM clawbacks"
    )
    op.execute("DELETE FROM clawbacks")
    op.drop_index("ix_clawback_settlements_payout_id", table_name="clawback_settlements")
    op.drop_table("clawback_settlements")

    op.drop_index("uq_rewards_live_referral_beneficiary", table_name="rewards")
    with op.batch_alter_table("rewards", schema=None) as batch_op:  # fails if one earned twice
        batch_op.create_unique_constraint(
            "uq_rewards_referral_beneficiary", ["referral_id", "beneficiary"]
        )
    with op.batch_alter_table("clawbacks", schema=None) as batch_op:
        batch_op.drop_index("ix_clawbacks_reward_id")
        batch_op.drop_index("ix_clawbacks_customer_id")
        batch_op.drop_constraint("settled", type_="check")
        batch_op.drop_column("settled_minor")
        batch_op.add_column(sa.Column("payout_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_clawbacks_payout_id_payouts", "payouts", ["payout_id"], ["id"]
        )
        batch_op.create_index(
            "ix_clawbacks_customer_open", ["customer_id", "payout_id"], unique=False
        )
    op.execute(
        f"INSERT INTO clawbacks ({CLAWBACK_COLUMNS}, payout_id) "
        f"SELECT {CLAWBACK_COLUMNS}, payout_id FROM {KEEP}"
    )
    op.drop_table(KEEP)
    op.drop_table("refunds")
