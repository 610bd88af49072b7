"""The rest of the conversation page's actions (tags, transfer, merge, macros) and starting a
new conversation from the customer page. As in `views`: the conversation or customer must be one
the agent may see (else 404), writes go through `services`, which record the event, and a
refusal comes back to the page as a message.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from conversations import services
from conversations.customers import customer_moved, customer_page
from conversations.selectors import (
    can_see,
    conversation_get_for_agent,
    conversations_visible_to,
    customer_get_for_agent,
    id_given,
)
from routing.models import Team


def _refused(request, exc: ValidationError) -> None:
    messages.error(request, "; ".join(exc.messages))


def _back(conversation):
    return redirect("inbox:conversation", number=conversation.pk)


@login_required
@require_POST
def conversation_tags(request, number: int):
    """`add`: one or more tags, separated by commas; `remove`: one tag's name."""
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    add = [name for name in request.POST.get("add", "").split(",") if name.strip()]
    remove = [request.POST.get("remove", "")]
    if not any(name.strip() for name in add + remove):
        messages.error(request, "Type the tag to add.")
        return _back(conversation)
    if any(len(name.strip()) > 50 for name in add):
        messages.error(request, "A tag has at most 50 characters.")
        return _back(conversation)
    services.conversation_tag(conversation=conversation, add=add, remove=remove, actor=request.user)
    return _back(conversation)


@login_required
@require_POST
def conversation_follow(request, number: int):
    """`follow`: "1" to hear of the conversation without holding it, "0" to stop."""
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    try:
        services.conversation_follow(
            conversation=conversation, user=request.user, follow=request.POST.get("follow") == "1"
        )
    except ValidationError as exc:
        _refused(request, exc)
    return _back(conversation)


@login_required
@require_POST
def conversation_uncopy(request, number: int):
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    services.conversation_uncopy(
        conversation=conversation,
        identity_id=id_given(request.POST.get("identity", "")),
        actor=request.user,
    )
    return _back(conversation)


@login_required
@require_POST
def conversation_copy(request, number: int):
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    try:
        services.conversation_copy(
            conversation=conversation, address=request.POST.get("address", ""), actor=request.user
        )
    except ValidationError as exc:
        _refused(request, exc)
    return _back(conversation)


@login_required
@require_POST
def conversation_transfer(request, number: int):
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    value = request.POST.get("team", "")
    team = Team.objects.filter(pk=id_given(value)).first()
    if team is None:
        messages.error(request, "Choose a team to transfer the conversation to.")
        return _back(conversation)
    services.conversation_set_team(
        conversation=conversation, team=team, actor=request.user, unassign_outsider=True
    )
    if not can_see(request.user, conversation):
        # Handing it to a team the agent is not in is the point of a transfer, not an error.
        messages.success(
            request, f"#{conversation.pk} was transferred to {team.name}; it left your inbox."
        )
        return redirect("inbox:list")
    messages.success(request, f"Transferred to {team.name}.")
    return _back(conversation)


@login_required
@require_POST
def macro_apply(request, number: int):
    """Apply one of the macros the agent may use (else 404, as for a conversation)."""
    from routing.automations import macro_apply as apply
    from routing.automations import macros_for

    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    value = request.POST.get("macro", "")
    macro = macros_for(request.user).filter(pk=id_given(value)).first()
    if macro is None:
        raise Http404("No such macro")
    try:
        applied = apply(
            macro=macro,
            conversation=conversation,
            actor=request.user,
            once=request.POST.get("once", ""),
        )
    except ValidationError as exc:  # saved around admin's checks
        messages.error(request, f"“{macro.name}” cannot be applied: {' '.join(exc.messages)}")
        return _back(conversation)
    if applied.repeated:
        messages.info(request, f"“{macro.name}” was already applied.")
    elif applied.skipped:
        messages.warning(request, f"“{macro.name}” applied, except: {'; '.join(applied.skipped)}")
    else:
        messages.success(request, f"“{macro.name}” applied.")
    if not can_see(request.user, conversation):
        return redirect("inbox:list")  # it moved to a team the agent is not in
    return _back(conversation)


@login_required
@require_POST
def chat_end(request, number: int):
    """End a live chat: resolved, and the visitor's widget offers a rating and transcript."""
    from channels_adapters.webchat.chat import chat_end as end

    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    try:
        end(conversation, actor=request.user)
    except ValidationError as exc:
        _refused(request, exc)
    else:
        messages.success(request, "Chat ended; the customer can rate it.")
    return _back(conversation)


@login_required
@require_POST
def conversation_merge(request, number: int):
    """Fold this conversation into the one numbered `into`, once `confirm` is ticked."""
    source = conversation_get_for_agent(user=request.user, conversation_id=number)
    into = id_given(request.POST.get("into", "").strip().lstrip("#"))
    if into is None:
        messages.error(request, "Type the number of the conversation to merge into.")
        return _back(source)
    # Same words for one that does not exist and one the agent may not see.
    target = conversations_visible_to(request.user).filter(pk=into).first()
    if target is None:
        messages.error(request, f"There is no conversation #{into} that you can see.")
        return _back(source)
    if not request.POST.get("confirm"):
        messages.error(request, "Nothing was merged: tick the box to confirm the merge.")
        return _back(source)
    try:
        target = services.conversation_merge(source=source, target=target, actor=request.user)
    except ValidationError as exc:
        _refused(request, exc)
        return _back(source)
    messages.success(request, f"#{source.pk} was merged into this conversation.")
    return _back(target)


@login_required
@require_POST
def conversation_start(request, customer_id: int):
    """Write to a customer first, on one of their addresses; the draft survives a refusal."""
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return customer_moved(request, customer)
    post = request.POST
    draft = {
        "identity": post.get("identity", ""),
        "subject": post.get("subject", "")[:300],
        "text": post.get("text", ""),
        # One picker per address that takes templates: the one picked.
        "template": next(filter(None, post.getlist("template")), "")[:512],
    }
    identity = customer.identities.filter(pk=id_given(draft["identity"])).first()
    try:
        if identity is None:
            raise ValidationError("Choose one of this customer's addresses.")
        conversation = services.conversation_start(
            customer=customer,
            identity=identity,
            author=request.user,
            text=draft["text"],
            subject=draft["subject"],
            again=post.get("again") == "1",
            template=draft["template"],
        )
    except services.StartedAlready as exc:
        draft["again"] = True  # the page shows it: pressing Send from there means it
        return customer_page(request, customer, status=409, start_errors=exc.messages, start=draft)
    except ValidationError as exc:
        return customer_page(request, customer, status=400, start_errors=exc.messages, start=draft)
    messages.success(request, "Conversation started; the message is on its way.")
    return redirect("inbox:conversation", number=conversation.pk)
