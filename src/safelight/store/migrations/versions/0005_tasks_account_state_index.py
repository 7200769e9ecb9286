"""index tasks by (account_id, state): the per-account cap on unfinished tasks

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_account_state', ['account_id', 'state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_account_state')
