"""One person, one referral: friends are unique by normalized email.

`referrals.friend_email_key` holds the friend's normalized email (`customers.email_key`) as it was
when they were attributed, under a unique key. Existing referrals are backfilled from their
friend's `email_key`; where old data already credits the same normalized email more than once,
the first referral (lowest id) gets the key and the later ones keep NULL (they stay as they are,
rewards included, and are counted in the migration's log).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 00:00:00
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

FIRST_OF_EACH_EMAIL = sa.text(
    "UPDATE referrals SET friend_email_key = "
    "(SELECT customers.email_key FROM customers WHERE customers.id = referrals.friend_id) "
    "WHERE referrals.id IN ("
    "SELECT MIN(r.id) FROM referrals r JOIN customers c ON c.id = r.friend_id GROUP BY c.email_key)"
)
LEFT_WITHOUT_KEY = sa.text("SELECT COUNT(*) FROM referrals WHERE friend_email_key IS NULL")


def upgrade():
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("friend_email_key", sa.String(length=320), nullable=True))
    connection = op.get_bind()
    connection.execute(FIRST_OF_EACH_EMAIL)
    repeated = connection.execute(LEFT_WITHOUT_KEY).scalar()
    if repeated:
        log.warning(
            "%d referral(s) repeat an earlier referral's friend email; they keep no email key",
            repeated,
        )
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_referrals_friend_email_key", ["friend_email_key"])


def downgrade():
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_constraint("uq_referrals_friend_email_key", type_="unique")
        batch_op.drop_column("friend_email_key")
