from datetime import timedelta
from zoneinfo import ZoneInfo

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.utils import dateformat, timezone

from routing import hours
from routing.models import BusinessHours, BusinessInterval, Holiday, Team, TeamMembership


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "business_hours", "member_count", "created_at"]
    list_select_related = ["business_hours"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [TeamMembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_members=Count("memberships"))

    @admin.display(description="members", ordering="_members")
    def member_count(self, team):
        return team._members


# --- Business hours --------------------------------------------------------------------------


class IntervalFormSet(BaseInlineFormSet):
    """Overlaps are checked across the whole formset, not in the model's clean(): the rows are
    edited together, and each row checked against the database would see its siblings' old
    times (moving 09–12 to 09–10 and 13–18 to 10–18 in one save would be refused)."""

    def clean(self):
        super().clean()
        intervals = sorted(
            (
                BusinessInterval(
                    weekday=form.cleaned_data["weekday"],
                    opens=form.cleaned_data["opens"],
                    closes=form.cleaned_data["closes"],
                )
                for form in self.forms
                if form.cleaned_data
                and not self._should_delete_form(form)
                and {"weekday", "opens", "closes"} <= form.cleaned_data.keys()
            ),
            key=lambda interval: (interval.weekday, interval.span),
        )
        # Sorted by opening, any overlap shows up between neighbours.
        overlaps = [
            f"{earlier.get_weekday_display()}: {earlier.opens:%H:%M}–{earlier.closes:%H:%M} "
            f"overlaps {later.opens:%H:%M}–{later.closes:%H:%M}."
            for earlier, later in zip(intervals, intervals[1:], strict=False)
            if earlier.weekday == later.weekday and later.span[0] < earlier.span[1]
        ]
        if overlaps:
            raise ValidationError(overlaps)


class BusinessIntervalInline(admin.TabularInline):
    model = BusinessInterval
    formset = IntervalFormSet
    extra = 1


class HolidayInline(admin.TabularInline):
    model = Holiday
    extra = 1


@admin.register(BusinessHours)
class BusinessHoursAdmin(admin.ModelAdmin):
    list_display = ["name", "timezone", "state", "updated_at"]
    search_fields = ["name", "timezone"]
    readonly_fields = ["state", "created_at", "updated_at"]
    inlines = [BusinessIntervalInline, HolidayInline]

    def get_queryset(self, request):
        # `state` reads every interval and closed day: load them with the page, not per row.
        return super().get_queryset(request).prefetch_related("intervals", "holidays")

    @admin.display(description="now")
    def state(self, schedule):
        if not schedule.pk:
            return "-"
        now = timezone.now()
        if hours.is_open(schedule, now):
            return "open now"
        opening = hours.next_opening(schedule, now)
        if opening is None:
            return "closed, no opening within a year"
        local = opening.astimezone(ZoneInfo(schedule.timezone))
        when = dateformat.format(
            local, "D H:i" if opening - now < timedelta(days=6) else "D j M H:i"
        )
        return f"closed, opens {when} {schedule.timezone}"
