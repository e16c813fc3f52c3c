"""signal log: forecast runs, signals, outcomes

Revision ID: 0001
Revises: 
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('forecast_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_path', sa.String(length=1024), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('data_snapshot', sa.String(length=255), nullable=False),
    sa.Column('universe', sa.String(length=1024), nullable=False),
    sa.Column('provider', sa.String(length=1024), nullable=False),
    sa.Column('data_dir', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_path', 'model_version', 'as_of', name='uq_forecast_run')
    )
    op.create_table('signals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('symbol', sa.String(length=255), nullable=False),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('horizon', sa.String(length=8), nullable=False),
    sa.Column('bars', sa.Integer(), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('last_close', sa.Float(), nullable=True),
    sa.Column('prob_up', sa.Float(), nullable=False),
    sa.Column('expected_return', sa.Float(), nullable=True),
    sa.Column('mean_log_return', sa.Float(), nullable=True),
    sa.Column('median_log_return', sa.Float(), nullable=True),
    sa.Column('close_q05', sa.Float(), nullable=True),
    sa.Column('close_q25', sa.Float(), nullable=True),
    sa.Column('close_q75', sa.Float(), nullable=True),
    sa.Column('close_q95', sa.Float(), nullable=True),
    sa.Column('return_q05', sa.Float(), nullable=True),
    sa.Column('return_q25', sa.Float(), nullable=True),
    sa.Column('return_q75', sa.Float(), nullable=True),
    sa.Column('return_q95', sa.Float(), nullable=True),
    sa.Column('signal', sa.String(length=5), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('baseline', sa.String(length=32), nullable=True),
    sa.Column('baseline_prob_up', sa.Float(), nullable=True),
    sa.Column('baseline_return_q05', sa.Float(), nullable=True),
    sa.Column('baseline_return_q25', sa.Float(), nullable=True),
    sa.Column('baseline_return_q75', sa.Float(), nullable=True),
    sa.Column('baseline_return_q95', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['forecast_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'symbol', 'as_of', 'horizon', name='uq_signal')
    )
    with op.batch_alter_table('signals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signals_as_of'), ['as_of'], unique=False)
        batch_op.create_index(batch_op.f('ix_signals_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_signals_symbol'), ['symbol'], unique=False)

    op.create_table('outcomes',
    sa.Column('signal_id', sa.Integer(), nullable=False),
    sa.Column('realised_date', sa.Date(), nullable=False),
    sa.Column('realised_close', sa.Float(), nullable=False),
    sa.Column('realised_return', sa.Float(), nullable=False),
    sa.Column('realised_log_return', sa.Float(), nullable=False),
    sa.Column('filled_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['signal_id'], ['signals.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('signal_id')
    )


def downgrade() -> None:
    op.drop_table('outcomes')
    with op.batch_alter_table('signals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signals_symbol'))
        batch_op.drop_index(batch_op.f('ix_signals_run_id'))
        batch_op.drop_index(batch_op.f('ix_signals_as_of'))

    op.drop_table('signals')
    op.drop_table('forecast_runs')
