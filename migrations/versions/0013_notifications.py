"""Emails To Referrers, One Row Per Event And Recipient.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 06:00:00
"""

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
