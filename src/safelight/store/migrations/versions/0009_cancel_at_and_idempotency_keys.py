"""Cancel-After deadlines (tasks.cancel_at) and Idempotency-Key records

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_at', sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tasks_cancel_at'), ['cancel_at'], unique=False)
    op.create_table('idempotency_keys',
                    sa.Column('account_id', sa.Integer(), nullable=False),
                    sa.Column('key', sa.String(length=255), nullable=False),
                    sa.Column('request_hash', sa.String(length=64), nullable=False),
                    sa.Column('task_id', sa.String(length=32), nullable=False),
                    sa.Column('created_at', sa.BigInteger(), nullable=False),
                    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                                            name=op.f('fk_idempotency_keys_account_id_accounts')),
                    sa.PrimaryKeyConstraint('account_id', 'key', name=op.f('pk_idempotency_keys')))
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))
    op.drop_table('idempotency_keys')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_cancel_at'))
        batch_op.drop_column('cancel_at')
