"""per-key request counts shared by API replicas

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rate_limit_windows',
                    sa.Column('key_hash', sa.String(length=64), nullable=False),
                    sa.Column('window_start', sa.BigInteger(), nullable=False),
                    sa.Column('hits', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('key_hash', 'window_start', name=op.f('pk_rate_limit_windows')))


def downgrade() -> None:
    op.drop_table('rate_limit_windows')
