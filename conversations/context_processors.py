from conversations.selectors import notifications_for


def inbox(request):
    """The unread count behind the bell in the top bar, for signed-in agents."""
    user = getattr(request, "user", None)
    if not (user and user.is_authenticated):
        return {}
    unread = notifications_for(user).filter(read_at__isnull=True).count()
    return {"unread_notifications": unread}
