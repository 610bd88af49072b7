class ContentSecurityPolicyMiddleware:
    """A strict Content-Security-Policy on every response we serve: our own scripts, styles and
    images only, no inline script, no framing. Pages that need more say so explicitly."""

    POLICY = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "object-src 'none'",
        ]
    )

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            policy = self.POLICY
            # Django admin ships inline scripts and styles; it is a staff-only page.
            if request.path.startswith("/admin/"):
                policy = policy.replace(
                    "script-src 'self'", "script-src 'self' 'unsafe-inline'"
                ).replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
            response["Content-Security-Policy"] = policy
        return response
