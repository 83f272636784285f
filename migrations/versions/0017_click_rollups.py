"""Click roll-ups: counts per day, per hour and per referrer, by channel, the mark of pruning,
and which clicks are rolled up (an added, empty column: the code before it runs unchanged);
rewards by purchase (a refund finds the rewards of its order, the funnel those of its orders).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UNROLLED = "rolled_up_at IS NULL"


def upgrade():
    op.create_table(
        "click_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.CheckConstraint("clicks >= 0", name=op.f("ck_click_days_clicks")),
        sa.PrimaryKeyConstraint("day", "channel", name=op.f("pk_click_days")),
    )
    op.create_table(
        "click_hours",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.CheckConstraint("clicks >= 0", name=op.f("ck_click_hours_clicks")),
        sa.PrimaryKeyConstraint("hour", "channel", name=op.f("pk_click_hours")),
    )
    op.create_table(
        "click_totals",
        sa.Column("referrer_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("clicks >= 0", name=op.f("ck_click_totals_clicks")),
        sa.ForeignKeyConstraint(
            ["referrer_id"],
            ["customers.id"],
            name=op.f("fk_click_totals_referrer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("referrer_id", "channel", name=op.f("pk_click_totals")),
    )
    op.create_table(
        "click_marks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_click_marks")),
    )
    op.add_column("clicks", sa.Column("rolled_up_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_clicks_unrolled_occurred",
        "clicks",
        ["occurred_at", "channel"],
        unique=False,
        sqlite_where=sa.text(UNROLLED),
        postgresql_where=sa.text(UNROLLED),
    )
    op.create_index(
        "ix_clicks_unrolled_referrer",
        "clicks",
        ["referrer_id", "channel"],
        unique=False,
        sqlite_where=sa.text(UNROLLED),
        postgresql_where=sa.text(UNROLLED),
    )

    op.create_index("ix_rewards_purchase_id", "rewards", ["purchase_id"], unique=False)


def downgrade():
    op.drop_index("ix_rewards_purchase_id", table_name="rewards")
    op.drop_index("ix_clicks_unrolled_referrer", table_name="clicks")
    op.drop_index("ix_clicks_unrolled_occurred", table_name="clicks")
    with op.batch_alter_table("clicks") as batch:
        batch.drop_column("rolled_up_at")
    op.drop_table("click_marks")
    op.drop_table("click_totals")
    op.drop_table("click_hours")
    op.drop_table("click_days")
