"""Thin tasks: ids in, a routing service call. All are idempotent."""

from celery import shared_task

from routing import automations, replies, services, sla


@shared_task(acks_late=True)
def queue_assign(team_id: int):
    assigned = services.queue_assign(team_id=team_id)
    services.queue_places_tell(team_id)  # the places moved, or someone new is in line
    return assigned


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
def satisfaction_survey(conversation_id: int):
    survey = replies.satisfaction_survey_send(conversation_id=conversation_id)
    return survey.pk if survey else None


@shared_task(acks_late=True)
def replies_sweep():
    return replies.replies_sweep()


@shared_task(acks_late=True)
def automations_idle():
    return automations.automations_idle_sweep()
