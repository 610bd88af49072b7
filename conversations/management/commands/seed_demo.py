"""Demo data so a newcomer's first screen is not empty. Safe to run again: it adds only what
is missing and never touches data it did not create."""

import random
from datetime import date, time, timedelta

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from channels_adapters.webchat import chat
from conversations import services
from conversations.models import (
    INBOX_SCOPED_ADDRESSES,
    CannedResponse,
    Channel,
    Conversation,
    Customer,
    Identity,
    Inbox,
    Message,
    inbox_scoped_address,
)
from conversations.selectors import fold
from helpdesk.models import User
from routing.models import (
    DEFAULT_SLA_POLICIES,
    Automation,
    AutoReply,
    BusinessHours,
    BusinessInterval,
    Holiday,
    Macro,
    RoutingRule,
    SlaClock,
    SlaPolicy,
    Team,
    TeamMembership,
)
from routing.replies import auto_reply_send
from routing.sla import sla_agent_replied, sla_clock_rerun, sla_due_set

DEMO_PASSWORD = "threadline-demo"  # noqa: S105 - printed in the README, demo only

AGENTS = [
    ("admin@example.com", "Alex Admin", User.Role.ADMIN, ["support", "billing"]),
    ("agent@example.com", "Dana Demo", User.Role.AGENT, ["support"]),
    ("ines@example.com", "Inês Costa", User.Role.AGENT, ["support"]),
    ("hugo@example.com", "Hugo Martin", User.Role.AGENT, ["billing"]),
    ("lucia@example.com", "Lucía Gómez", User.Role.AGENT, ["billing", "support"]),
]

INBOXES = [
    ("Support email", Channel.EMAIL, "support@acme.example", "support"),
    ("Billing email", Channel.EMAIL, "billing@acme.example", "billing"),
    ("SMS line", Channel.SMS, "+15550100", "support"),
    ("Acme on Messenger", Channel.MESSENGER, "acme-page", "support"),
    ("WhatsApp", Channel.WHATSAPP, "+15550199", "support"),
    ("Website chat", Channel.WEBCHAT, "", "support"),
    ("Shop integration", Channel.API, "", "billing"),
]

# The demo page (/widget/demo/) embeds this widget. Replies follow a visitor who left by email
# after one minute rather than five, so trying it out is quick.
DEMO_WIDGET = {
    "greeting": "Hi! Ask us anything about your order.",
    "greetings": {
        "es": "¡Hola! Pregúntanos lo que quieras sobre tu pedido.",
        "fr": "Bonjour ! Posez-nous vos questions sur votre commande.",
        "pt": "Olá! Pergunte-nos o que quiser sobre a sua encomenda.",
    },
    "prechat_email": "optional",
    "email_after_minutes": 1,
}

WEEKDAYS = range(5)  # Monday to Friday

# Automatic replies of the email and SMS inboxes: (channel, kind, language, body).
AUTO_REPLIES = [
    (
        Channel.SMS,
        "acknowledgement",
        "",
        "Hi {name}, thanks for writing to Acme. Your request is #{number}; we usually reply "
        "within {expected_reply}.",
    ),
    (
        Channel.SMS,
        "acknowledgement",
        "pt",
        "Olá {name}, obrigado por escrever à Acme. O seu pedido é o #{number}; respondemos "
        "normalmente em {expected_reply}.",
    ),
    (
        Channel.EMAIL,
        "acknowledgement",
        "",
        "Hi {name},\n\nThanks for writing to {inbox}. Your request is #{number}; keep that "
        "number in the subject if you write again. We usually reply within {expected_reply}."
        "\n\nAcme Support",
    ),
    (
        Channel.EMAIL,
        "acknowledgement",
        "pt",
        "Olá {name},\n\nObrigado por escrever para {inbox}. O seu pedido é o #{number}. "
        "Respondemos normalmente em {expected_reply}.\n\nApoio Acme",
    ),
    (
        Channel.EMAIL,
        "out_of_office",
        "",
        "Hi {name},\n\nWe are closed right now and open again {opens_at}. Your request is "
        "#{number}, and we usually reply within {expected_reply} of opening.\n\nAcme Support",
    ),
]

# (name, time zone, team, opens, closes, closed days)
SCHEDULES = [
    (
        "Support hours",
        "Europe/Lisbon",
        "support",
        time(9),
        time(18),
        [
            (date(2026, 12, 8), "Imaculada Conceição"),
            (date(2026, 12, 25), "Natal"),
            (date(2027, 1, 1), "Ano Novo"),
            (date(2027, 3, 26), "Sexta-feira Santa"),
        ],
    ),
    ("Billing hours", "Europe/Madrid", "billing", time(10), time(16), []),
]

FIRST = [
    "Maria",
    "João",
    "Camille",
    "Lucas",
    "Sofía",
    "Mateo",
    "Emma",
    "Noah",
    "Beatriz",
    "Pierre",
    "Valentina",
    "Liam",
    "Ana",
    "Louis",
    "Carmen",
    "Olivia",
    "Tiago",
    "Chloé",
    "Javier",
    "Grace",
    "Rafael",
    "Manon",
    "Elena",
    "Ethan",
    "Léa",
]
LAST = [
    "Silva",
    "Santos",
    "Dubois",
    "Moreau",
    "García",
    "López",
    "Smith",
    "Brown",
    "Oliveira",
    "Lefèvre",
    "Fernández",
    "Johnson",
]

SCENARIOS = [
    (
        "en",
        "Order #{n} has not arrived",
        [
            "Hi, my order #{n} was supposed to arrive on Monday and the tracking has not moved.",
            "Any news? I need it before the weekend.",
        ],
        "Sorry about the wait! The carrier lost the scan; a replacement ships today.",
    ),
    (
        "pt",
        "Reembolso do pedido {n}",
        [
            "Olá, pedi o reembolso do pedido {n} há duas semanas e ainda não recebi nada.",
        ],
        "Olá! O reembolso foi processado hoje e aparece no seu cartão em até 5 dias.",
    ),
    (
        "fr",
        "Problème de connexion",
        [
            "Bonjour, je n'arrive plus à me connecter à mon compte depuis hier soir.",
            "J'ai déjà essayé de réinitialiser le mot de passe.",
        ],
        "Bonjour ! Nous avons débloqué votre compte, vous pouvez réessayer.",
    ),
    (
        "es",
        "Cambiar mi plan",
        [
            "Hola, quiero pasar del plan básico al plan empresa. ¿Cómo lo hago?",
        ],
        "¡Hola! Ya está hecho: su plan empresa está activo desde hoy.",
    ),
    (
        "en",
        "Invoice {n} looks wrong",
        [
            "The invoice {n} charges us for 12 seats but we only have 9 users.",
        ],
        "You're right, I've issued a credit note for the 3 extra seats.",
    ),
    (
        "en",
        "Refund please",
        [
            "I'd like a refund for my last purchase, the size was wrong.",
        ],
        None,
    ),
    (
        "pt",
        "Dúvida sobre entrega",
        [
            "Vocês entregam em Lisboa? Quanto tempo demora?",
        ],
        "Entregamos sim, em 2 a 3 dias úteis.",
    ),
    (
        "fr",
        "Facture introuvable",
        [
            "Où puis-je télécharger ma facture du mois dernier ?",
        ],
        None,
    ),
]

# An earlier, closed conversation on a customer's other channel, weeks before (every tenth
# customer): the sidebar and the customer page show history across channels.
# language -> (subject, the customer's question, the answer)
EARLIER = {
    "en": (
        "Change of delivery address",
        "Hello, can I still change the delivery address of my order?",
        "Done: the order now goes to your new address.",
    ),
    "pt": (
        "Mudança de endereço",
        "Olá, ainda posso mudar o endereço de entrega do meu pedido?",
        "Feito: o pedido vai para o novo endereço.",
    ),
    "es": (
        "Cambio de dirección",
        "Hola, ¿todavía puedo cambiar la dirección de entrega de mi pedido?",
        "Hecho: el pedido va a su nueva dirección.",
    ),
    "fr": (
        "Changement d'adresse",
        "Bonjour, puis-je encore changer l'adresse de livraison de ma commande ?",
        "C'est fait : la commande part à votre nouvelle adresse.",
    ),
}
TAGS = ["delivery", "refund", "login", "plan-change", "invoice", "refund", "delivery", "invoice"]

# (team or None for everyone, shortcut, title, body)
CANNED = [
    (
        None,
        "refund-policy",
        "Refund policy",
        "Hi {customer.first_name|there},\n\nRefunds are made to the original payment method within "
        "5 business days of the item reaching us. I'll keep conversation #{conversation.number} "
        "open until it's done.\n\n{agent.first_name}",
    ),
    (
        None,
        "reembolso",
        "Política de reembolso (pt)",
        "Olá {customer.first_name|},\n\nO reembolso é feito no meio de pagamento original em até "
        "5 dias úteis depois de recebermos o artigo. Mantenho a conversa #{conversation.number} "
        "aberta até estar concluído.\n\n{agent.first_name}",
    ),
    (
        "support",
        "tracking-delay",
        "Delivery delayed",
        "Hi {customer.first_name|there}, sorry for the wait! The carrier has the parcel and it "
        "should move again within 48 hours. I'll follow up here if it doesn't. {agent.name}",
    ),
    (
        None,
        "refund-issued",
        "Refund issued",
        "Hi {customer.first_name|there},\n\nGood news: your refund is on its way. It reaches the "
        "original payment method within 5 business days. I'm closing #{conversation.number}; "
        "reply to this message if anything is missing.\n\n{agent.first_name}",
    ),
    (
        None,
        "still-there",
        "Still there? (reminder)",
        "Hi {customer.first_name|there},\n\nWe haven't heard back about #{conversation.number}. "
        "Is there anything else we can do? If we don't hear from you, we'll close it in a few "
        "days; replying reopens it at any time.\n\n{agent.first_name}",
    ),
    (
        "billing",
        "segunda-via-fatura",
        "Segunda via da fatura (pt)",
        "Olá {customer.first_name|}, a segunda via da fatura está em Conta → Faturas. "
        "Qualquer dúvida, responda a esta mensagem. {agent.name}",
    ),
]

# (name, position, conditions, actions): see routing.rules for the vocabulary.
ROUTING_RULES = [
    (
        "Enterprise refunds to Billing",
        10,
        [
            {
                "field": "subject_or_text",
                "op": "contains",
                "value": ["refund", "reembolso", "remboursement", "devolución"],
            },
            {"field": "customer.plan", "op": "is", "value": "enterprise"},
        ],
        {"team": "billing", "priority": Conversation.Priority.HIGH, "tags": "refund, enterprise"},
    ),
]
# (name, event, idle status and hours, actions): see routing.automations for the vocabulary;
# canned responses are named by shortcut here and by id in the saved actions.
AUTOMATIONS = [
    (
        "Pending 3 days: remind the customer",
        Automation.Event.IDLE,
        (Conversation.Status.PENDING, 72),
        [{"action": "reply", "canned": "still-there"}],
    ),
    (
        "Pending 7 days: resolve",
        Automation.Event.IDLE,
        (Conversation.Status.PENDING, 7 * 24),
        [{"action": "status", "status": "resolved"}],
    ),
]
MACROS = [
    (
        "Refund issued",
        [
            {"action": "add_tags", "tags": ["refund-issued"]},
            {"action": "reply", "canned": "refund-issued"},
            {"action": "status", "status": "resolved"},
        ],
    ),
]
# What each demo agent takes on at once: a live chat weighs 3, anything else 1.
CAPACITIES = {
    "admin@example.com": 3,
    "agent@example.com": 9,
    "ines@example.com": 9,
    "hugo@example.com": 12,
    "lucia@example.com": 6,
}
ROUTED_CUSTOMER = (
    "Grace Okafor",
    "grace.okafor@northwind.example",
    {"plan": "enterprise", "company": "Northwind Traders", "seats": 250},
    "Duplicate charge on our annual plan",
    "Hello, we were charged twice for our annual licence (invoice 2026-118). Could you "
    "refund the duplicate payment?",
)

# Finished chats' ratings, in turn.
RATINGS = [5, 4, 5, 2, 5, 3, 4]
STATUSES = [Conversation.Status.OPEN] * 5 + [
    Conversation.Status.PENDING,
    Conversation.Status.RESOLVED,
    Conversation.Status.SNOOZED,
    Conversation.Status.CLOSED,
]


def _address(kind: str, i: int, first: str, last: str) -> str:
    if kind == Channel.EMAIL:
        # In ASCII: mail to "chloé.smith@" needs SMTPUTF8 (see EmailAdapter.send_refusal).
        return f"{fold(first)}.{fold(last)}.{i}@customers.example".lower().replace(" ", "")
    if kind in (Channel.SMS, Channel.WHATSAPP):
        return f"+1555{2000000 + i:07d}"
    return f"demo-{kind}-{i}"


class Command(BaseCommand):
    help = "Create demo agents, teams, inboxes and ~50 customers with conversations (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=50)

    def handle(self, *args, customers, **options):
        rng = random.Random(42)  # the same demo every time
        self.reply_delays = {}  # conversation id -> how long its historic reply took
        with transaction.atomic():
            teams = self._teams()
            self._business_hours(teams)
            agents = self._agents(teams)
            self._canned_responses(teams, author=agents[0])
            inboxes = self._inboxes(teams)
            self._routing(teams)
            if not SlaPolicy.objects.exists():  # the defaults, when no policy exists at all
                SlaPolicy.objects.bulk_create(SlaPolicy(**f) for f in DEFAULT_SLA_POLICIES)
            self._automations()
        created = 0
        for i in range(customers):
            with transaction.atomic():
                created += self._customer(i, rng, inboxes, agents)
        # After the history, so that only the conversation that opens now is acknowledged.
        self._auto_replies()
        self._routed_conversation(inboxes)
        self.stdout.write(
            f"Demo ready: {created} new customers. Log in at /admin/ as admin@example.com "
            f"(or agent@example.com) with password {DEMO_PASSWORD!r}."
        )

    def _teams(self):
        return {
            slug: Team.objects.get_or_create(slug=slug, defaults={"name": name})[0]
            for slug, name in (("support", "Support"), ("billing", "Billing"))
        }

    def _business_hours(self, teams):
        """A schedule is filled in and given to its team only when the seed creates it, so
        hours an admin has since edited (or taken off the team) stay as they are."""
        for name, zone, team, opens, closes, closed_days in SCHEDULES:
            schedule, created = BusinessHours.objects.get_or_create(
                name=name, defaults={"timezone": zone}
            )
            if created:
                BusinessInterval.objects.bulk_create(
                    BusinessInterval(schedule=schedule, weekday=day, opens=opens, closes=closes)
                    for day in WEEKDAYS
                )
                Holiday.objects.bulk_create(
                    Holiday(schedule=schedule, date=day, name=holiday)
                    for day, holiday in closed_days
                )
                Team.objects.filter(pk=teams[team].pk, business_hours=None).update(
                    business_hours=schedule
                )

    def _canned_responses(self, teams, *, author):
        # Looked up by team and shortcut only: an admin's edits to a demo response stay.
        for team, shortcut, title, body in CANNED:
            CannedResponse.objects.get_or_create(
                team=teams[team] if team else None,
                shortcut=shortcut,
                defaults={"title": title, "body": body, "created_by": author},
            )

    def _agents(self, teams):
        agents = []
        hashed = None  # the demo password hashed once: each hash costs ~0.4 s
        for email, name, role, team_slugs in AGENTS:
            user = User.objects.filter(email=email).first()
            if user is None:
                hashed = hashed or make_password(DEMO_PASSWORD)
                factory = (
                    User.objects.create_superuser
                    if role == User.Role.ADMIN
                    else User.objects.create_user
                )
                user = factory(
                    email=email, display_name=name, availability=User.Availability.ONLINE
                )
                user.password = hashed
                user.save(update_fields=["password"])
            for slug in team_slugs:
                TeamMembership.objects.get_or_create(team=teams[slug], user=user)
            agents.append(user)
        return agents

    def _inboxes(self, teams):
        inboxes = {}
        for name, kind, address, team in INBOXES:
            defaults = {"address": address, "default_team": teams[team]}
            if kind == Channel.EMAIL:
                defaults["signature"] = "{agent}\n{inbox} · Acme Inc."
            inbox, _ = Inbox.objects.get_or_create(name=name, kind=kind, defaults=defaults)
            if kind == Channel.WEBCHAT and not inbox.settings:
                inbox.settings = DEMO_WIDGET
                inbox.save(update_fields=["settings"])
            inboxes.setdefault(kind, inbox)
        return inboxes

    # --- Routing: a rule, the agents' capacities, and a conversation it routes --------------

    def _routing(self, teams):
        """The rules are looked up by name; capacities are set only when the seed creates the
        rules, so an admin's later changes to either stay."""
        for name, position, conditions, actions in ROUTING_RULES:
            _, created = RoutingRule.objects.get_or_create(
                name=name,
                defaults={
                    "position": position,
                    "conditions": conditions,
                    "team": teams[actions["team"]],
                    "priority": actions["priority"],
                    "tags": actions["tags"],
                },
            )
            if created:
                for email, capacity in CAPACITIES.items():
                    TeamMembership.objects.filter(user__email=email).update(max_open=capacity)

    def _auto_replies(self):
        """Templates for inboxes that have none, so an admin's own stay as they are."""
        for inbox in Inbox.objects.filter(kind__in=(Channel.EMAIL, Channel.SMS)):
            if not AutoReply.objects.filter(inbox=inbox).exists():
                AutoReply.objects.bulk_create(
                    AutoReply(inbox=inbox, kind=kind, language=language, body=body)
                    for channel, kind, language, body in AUTO_REPLIES
                    if channel == inbox.kind
                )

    def _automations(self):
        """Looked up by name, so an admin's edits to them stay."""
        canned = dict(CannedResponse.objects.filter(team=None).values_list("shortcut", "pk"))

        def saved(actions):
            return [
                {**action, "canned": canned[action["canned"]]} if "canned" in action else action
                for action in actions
            ]

        for name, event, (status, hours), actions in AUTOMATIONS:
            Automation.objects.get_or_create(
                name=name,
                defaults={
                    "event": event,
                    "idle_status": status,
                    "idle_hours": hours,
                    "actions": saved(actions),
                },
            )
        for name, actions in MACROS:
            Macro.objects.get_or_create(name=name, defaults={"actions": saved(actions)})

    def _routed_conversation(self, inboxes):
        """An enterprise customer asks for a refund at the support address: the rule sends it
        to Billing with high priority, where it waits for the first billing agent online."""
        name, address, attributes, subject, text = ROUTED_CUSTOMER
        if Identity.objects.filter(kind=Channel.EMAIL, address=address).exists():
            return
        with transaction.atomic():
            identity = services.identity_get_or_create(
                kind=Channel.EMAIL, address=address, name=name
            )
            services.customer_update(customer=identity.customer, data={"attributes": attributes})
            received = services.message_receive(
                inbox=inboxes[Channel.EMAIL],
                inbound=services.InboundMessage(
                    channel=Channel.EMAIL,
                    address=address,
                    name=name,
                    subject=subject,
                    text=text,
                    provider_id="demo-routing-refund",
                ),
            )
        # Acknowledged here rather than by the worker the demo has not started yet; the
        # reply is queued, and the server's sweep hands it to delivery once it runs.
        auto_reply_send(message_id=received.message.pk, opened=True)

    def _customer(self, i, rng, inboxes, agents) -> int:
        first, last = FIRST[i % len(FIRST)], LAST[(i * 7) % len(LAST)]
        kinds = list(inboxes)
        kind = kinds[i % len(kinds)]
        address = _address(kind, i, first, last)
        inbox = inboxes[kind]
        stored = address  # as the identity keeps it
        if kind in INBOX_SCOPED_ADDRESSES:
            stored = inbox_scoped_address(inbox.pk, address)
        if Identity.objects.filter(kind=kind, address=stored).exists():
            return 0  # seeded on an earlier run
        language, subject, texts, reply = SCENARIOS[i % len(SCENARIOS)]
        n = 10400 + i
        name = f"{first} {last}"
        other = Channel.EMAIL if kind != Channel.EMAIL else Channel.SMS  # a second channel
        agent = agents[i % len(agents)]
        if i % 10 == 0:
            earlier = self._earlier_conversation(i, name, language, inboxes[other], agent)
            # The address they write from now is theirs too: the new message finds the profile.
            Identity.objects.create(
                customer=earlier.customer, kind=kind, address=stored, display_name=name
            )
        for j, text in enumerate(texts):
            received = services.message_receive(
                inbox=inbox,
                inbound=services.InboundMessage(
                    channel=kind,
                    address=address,
                    name=name,
                    language=language,
                    subject=subject.format(n=n) if kind in (Channel.EMAIL, Channel.API) else "",
                    text=text.format(n=n),
                    provider_id=f"demo-{i}-{j}",
                ),
            )
        conversation = received.message.conversation
        customer = conversation.customer
        customer.attributes = {
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "orders": rng.randint(0, 30),
        }
        customer.save(update_fields=["attributes"])
        if i % 5 == 0:  # a customer who also writes on a second channel
            Identity.objects.get_or_create(
                kind=other,
                address=_address(other, i, first, last),
                defaults={"customer": customer, "display_name": name},
            )

        if i % 3:
            services.conversation_assign(conversation=conversation, assignee=agent, actor=agent)
        if reply:
            delay = timedelta(minutes=rng.choice([4, 9, 12, 20, 45, 70, 90, 150, 300]))
            self._historic_reply(conversation, agent, reply, received.message, delay)
        if i % 4 == 0:
            services.note_add(
                conversation=conversation,
                author=agent,
                text="Checked the order history; customer is a repeat buyer.",
            )
        status = STATUSES[i % len(STATUSES)]
        if status != Conversation.Status.OPEN:
            services.conversation_set_status(
                conversation=conversation,
                status=status,
                actor=agent,
                snoozed_until=timezone.now() + timedelta(days=2)
                if status == Conversation.Status.SNOOZED
                else None,
            )
        services.conversation_tag(
            conversation=conversation, add=[TAGS[i % len(SCENARIOS)]], actor=agent
        )
        if i % 6 == 0:
            services.conversation_set_priority(
                conversation=conversation, priority=Conversation.Priority.HIGH, actor=agent
            )
        if kind == Channel.WEBCHAT and (status != Conversation.Status.OPEN or i % 2 == 0):
            # The visitor rated the chat when it ended (the conversation may go on by email).
            chat.conversation_rate(conversation, rating=RATINGS[i % len(RATINGS)])
        self._spread_in_time(conversation, hours_ago=rng.randint(1, 240))
        return 1

    def _earlier_conversation(self, i, name, language, inbox, agent) -> Conversation:
        """A question the customer asked on `inbox`'s channel weeks ago, answered and closed."""
        subject, text, answer = EARLIER.get(language, EARLIER["en"])
        first, last = name.split(" ", 1)
        received = services.message_receive(
            inbox=inbox,
            inbound=services.InboundMessage(
                channel=inbox.kind,
                address=_address(inbox.kind, i, first, last),
                name=name,
                language=language,
                subject=subject if inbox.kind == Channel.EMAIL else "",
                text=text,
                provider_id=f"demo-{i}-earlier",
            ),
        )
        conversation = received.message.conversation
        self._historic_reply(conversation, agent, answer, received.message, timedelta(hours=2))
        services.conversation_set_status(
            conversation=conversation, status=Conversation.Status.CLOSED, actor=agent
        )
        self._spread_in_time(conversation, hours_ago=24 * (20 + i % 30))
        return conversation

    def _keep_delays(self, conversation, shift):
        conversation.refresh_from_db()
        room = shift - timedelta(minutes=1)
        delay = min(self.reply_delays.get(conversation.pk, timedelta(0)), room)
        changes = {}
        if conversation.first_response_at and delay:
            changes["first_response_at"] = conversation.created_at + delay
            conversation.messages.filter(
                direction=Message.Direction.OUTBOUND, author__isnull=False
            ).update(created_at=changes["first_response_at"], sent_at=changes["first_response_at"])
        if conversation.resolved_at:
            # Resolved a while after the answer: 1-4 hours, by its number.
            changes["resolved_at"] = conversation.created_at + min(
                delay + timedelta(hours=1 + conversation.pk % 4), room
            )
        moments = [conversation.last_activity_at, *changes.values()]
        changes["last_activity_at"] = max(moments)
        Conversation.objects.filter(pk=conversation.pk).update(**changes)

    def _historic_reply(self, conversation, agent, text, inbound, delay):
        """A reply sent before the demo began, `delay` after the customer wrote: stored as
        sent, not queued, since the demo addresses lead nowhere. Its SLA clock records the
        delay, which is what the inbox's expected reply time is worked out from."""
        now = timezone.now()
        self.reply_delays[conversation.pk] = delay
        conversation = Conversation.objects.select_related("inbox").get(pk=conversation.pk)
        sla_agent_replied(conversation=conversation, now=now)
        for clock in SlaClock.objects.filter(conversation=conversation, target="first_response"):
            clock.elapsed_seconds = delay.total_seconds()
            clock.outcome = "met" if clock.elapsed_seconds <= clock.goal_seconds else "breached"
            clock.breached_at = clock.started_at + delay if clock.outcome == "breached" else None
            clock.save()
        Message.objects.create(
            conversation=conversation,
            direction=Message.Direction.OUTBOUND,
            channel=inbound.channel,
            inbox=inbound.inbox,
            identity=inbound.identity,
            author=agent,
            text=text,
            status=Message.Status.SENT,
            sent_at=now,
        )
        Conversation.objects.filter(pk=conversation.pk).update(
            first_response_at=now,
            waiting_since=None,
            last_activity_at=now,
            sla_due_at=conversation.sla_due_at,
        )

    def _spread_in_time(self, conversation, hours_ago):
        """Move the conversation back in time so the demo list has a realistic spread; its
        reply (see _historic_reply) and its resolution keep their delays, within what the
        move leaves room for, so that reports show real response and resolution times."""
        shift = timedelta(hours=hours_ago)
        for message in conversation.messages.all():
            Message.objects.filter(pk=message.pk).update(
                created_at=message.created_at - shift,
                sent_at=message.sent_at and message.sent_at - shift,
            )
        conversation.refresh_from_db()
        Conversation.objects.filter(pk=conversation.pk).update(
            **{
                field: getattr(conversation, field) - shift
                for field in (
                    "created_at",
                    "last_activity_at",
                    "last_inbound_at",
                    "waiting_since",
                    "first_response_at",
                    "resolved_at",
                )
                if getattr(conversation, field)
            }
        )
        conversation.events.update(created_at=conversation.created_at - shift)
        # "Last seen" (the composer's channel list) is when the address last wrote to us.
        inbound = Message.objects.filter(direction=Message.Direction.INBOUND)
        wrote = inbound.filter(identity=OuterRef("pk")).order_by("-created_at").values("created_at")
        Identity.objects.filter(
            pk__in=inbound.filter(conversation=conversation).values("identity")
        ).update(last_seen_at=Subquery(wrote[:1]))
        # The customer is ours since their first conversation ("since" on their page).
        Customer.objects.filter(
            pk=conversation.customer_id, created_at__gt=conversation.created_at - shift
        ).update(created_at=conversation.created_at - shift)
        self._keep_delays(conversation, shift)
        # Its SLA clocks too; targets that ran out in the meantime count as long breached
        # (and warned about), so the demo does not open with a burst of alerts.
        for clock in conversation.sla_clocks.all():
            for field in (
                "started_at",
                "running_since",
                "due_at",
                "warn_at",
                "stopped_at",
                "breached_at",
            ):
                if getattr(clock, field):
                    setattr(clock, field, getattr(clock, field) - shift)
            if clock.running_since and clock.stopped_at is None:
                # Counted again from its new start, in the team's business hours: shifted as
                # it was, a target could fall due on a Sunday night.
                sla_clock_rerun(conversation, clock)
            if clock.stopped_at is None and clock.due_at and clock.due_at <= timezone.now():
                clock.breached_at = clock.warned_at = clock.due_at
            clock.save()
        sla_due_set(conversation)
        Conversation.objects.filter(pk=conversation.pk).update(sla_due_at=conversation.sla_due_at)
