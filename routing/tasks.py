"""Thin tasks: ids in, a routing service call. All are idempotent."""

from celery import shared_task

from routing import automations, replies, services, sla


@shared_task(acks_late=True)
def queue_assign(team_id: int):
    return services.queue_assign(team_id=team_id)


@shared_task(acks_late=True)
def queues_sweep():
    return services.queues_sweep()


@shared_task(acks_late=True)
def sla_sweep():
    return sla.sla_sweep()


@shared_task(acks_late=True)
def auto_reply(message_id: int, opened: bool):
    reply = replies.auto_reply_send(message_id=message_id, opened=opened)
    return reply.pk if reply else None


@shared_task(acks_late=True)
def automations_idle():
    return automations.automations_idle_sweep()
