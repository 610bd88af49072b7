FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    THREADLINE_VAR_DIR=/data
WORKDIR /app

COPY pyproject.toml README.md ./
COPY helpdesk ./helpdesk
COPY conversations ./conversations
COPY channels_adapters ./channels_adapters
COPY routing ./routing
RUN pip install .
COPY . .
# collectstatic needs production settings that start; this throwaway key never leaves the build.
RUN DJANGO_ENV=production DEBUG=false ALLOWED_HOSTS=build \
    SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --noinput \
    && useradd --system --home /app threadline && mkdir -p /data && chown threadline /data
USER threadline
EXPOSE 8000
CMD ["uvicorn", "helpdesk.asgi:application", "--host", "0.0.0.0", "--port", "8000", \
     "--proxy-headers", "--ws-max-size", "1048576"]
