"""batch key for claiming compatible tasks together; per-task backend attempt log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 14:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_key', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('backend_attempts', sa.Text(), nullable=True))
        batch_op.create_index('ix_tasks_state_batch_create', ['state', 'batch_key', 'create_time'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_state_batch_create')
        batch_op.drop_column('backend_attempts')
        batch_op.drop_column('batch_key')
