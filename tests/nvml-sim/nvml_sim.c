/*
 * A simulated NVIDIA Management Library: libnvidia-ml.so.1 for machines without a GPU.
 *
 * It implements the NVML calls deepdockd makes, with the C signatures of nvml.h, so that the
 * real pynvml code runs against it. The GPUs come from the JSON file named in
 * $NVML_SIM_CONFIG, read at nvmlInit:
 *
 *   {"driver_version": "550.54.15",
 *    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
 *              "memory_total_mib": 81559, "power_limit_w": 700,
 *              "memory_used_mib": [1024, 2048], "utilization": [10, 35],
 *              "power_w": [70.5, 120], "temperature_c": [40, 44],
 *              "fan_pct": null,                      (null or absent: NOT_SUPPORTED)
 *              "lost_if_exists": "/tmp/gpu1.lost",   (GPU_IS_LOST while that file exists)
 *              "delay_ms": 0,                        (each reading sleeps this long: a slow driver)
 *              "call_delay_us": 8}]}                 (each reading spins this long: its real cost)
 *
 * Each reading is a list of values: the n-th call for that device and field returns value
 * n mod length, so readings move over time and a test can compute every value returned.
 *
 * "call_delay_us" is what one reading costs a real driver, to time the daemon against (the
 * benchmarks use the costs measured on an H100): a number for every reading, or an object by
 * NVML function, e.g. {"nvmlDeviceGetMemoryInfo": 8, "nvmlDeviceGetPowerUsage": 5}; a
 * function the simulator does not implement is refused, so no cost is silently dropped. It
 * spins rather than sleeps: a driver call of a few microseconds is an ioctl that keeps the
 * CPU busy, so its time counts as the caller's CPU time (and Linux's 50 us timer slack would
 * stretch so short a sleep). 0 or absent: no cost, as before.
 *
 * Without $NVML_SIM_CONFIG, nvmlInit fails with DRIVER_NOT_LOADED, as on a host without a
 * driver.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

enum { FIELD_MEMORY, FIELD_UTILIZATION, FIELD_POWER, FIELD_TEMPERATURE, FIELD_FAN, FIELD_COUNT };
static const char *FIELD_KEYS[FIELD_COUNT] = {
    "memory_used_mib", "utilization", "power_w", "temperature_c", "fan_pct",
};
/* The NVML function that reads each field: the keys of "call_delay_us". */
static const char *FIELD_CALLS[FIELD_COUNT] = {
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTemperature", "nvmlDeviceGetFanSpeed",
};

typedef struct {
    double *values; /* NULL: the field is not supported */
    int length;
    unsigned long calls;
} series_t;

typedef struct sim_device {
    char name[96];
    char uuid[96];
    double memory_total_mib;
    double power_limit_w;
    char lost_if_exists[512];
    unsigned int delay_ms;
    unsigned int call_delay_us[FIELD_COUNT];
    series_t fields[FIELD_COUNT];
} sim_device_t;

typedef struct sim_device *nvmlDevice_t;

static sim_device_t *devices;
static unsigned int device_count;
static char driver_version[80];
static int initialized;

static void free_devices(void) {
    for (unsigned int i = 0; i < device_count; i++)
        for (int f = 0; f < FIELD_COUNT; f++) free(devices[i].fields[f].values);
    free(devices);
    devices = NULL;
    device_count = 0;
}

static char *read_file(const char *path) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    rewind(file);
    char *text = malloc(size + 1);
    if (text && fread(text, 1, size, file) == (size_t)size) {
        text[size] = '\0';
    } else {
        free(text);
        text = NULL;
    }
    fclose(file);
    return text;
}

static void copy_string(char *target, size_t size, const cJSON *item, const char *fallback) {
    snprintf(target, size, "%s", cJSON_IsString(item) ? item->valuestring : fallback);
}

static int load_series(series_t *series, const cJSON *item) {
    series->calls = 0;
    series->values = NULL;
    series->length = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item)) {
        series->values = malloc(sizeof(double));
        series->values[0] = item->valuedouble;
        series->length = 1;
        return 0;
    }
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) == 0) return -1;
    series->length = cJSON_GetArraySize(item);
    series->values = calloc(series->length, sizeof(double));
    for (int i = 0; i < series->length; i++) {
        const cJSON *value = cJSON_GetArrayItem(item, i);
        if (!cJSON_IsNumber(value)) return -1;
        series->values[i] = value->valuedouble;
    }
    return 0;
}

/* "call_delay_us": absent, a number for every reading, or an object by NVML function. On an
 * error, *unknown_call names the function the simulator does not implement, if that was it. */
static int load_call_delays(unsigned int delays_us[FIELD_COUNT], const cJSON *item,
                            const char **unknown_call) {
    for (int f = 0; f < FIELD_COUNT; f++) delays_us[f] = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item) && item->valuedouble >= 0) {
        for (int f = 0; f < FIELD_COUNT; f++) delays_us[f] = (unsigned int)item->valuedouble;
        return 0;
    }
    if (!cJSON_IsObject(item)) return -1;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, item) {
        int field = 0;
        while (field < FIELD_COUNT && strcmp(entry->string, FIELD_CALLS[field]) != 0) field++;
        if (field == FIELD_COUNT) {
            *unknown_call = entry->string;
            return -1;
        }
        if (!cJSON_IsNumber(entry) || entry->valuedouble < 0) return -1;
        delays_us[field] = (unsigned int)entry->valuedouble;
    }
    return 0;
}

static nvmlReturn_t load_config(void) {
    const char *path = getenv("NVML_SIM_CONFIG");
    if (path == NULL || *path == '\0') return NVML_ERROR_DRIVER_NOT_LOADED;
    char *text = read_file(path);
    if (text == NULL) {
        fprintf(stderr, "nvml-sim: cannot read NVML_SIM_CONFIG=%s\n", path);
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *gpus = cJSON_GetObjectItemCaseSensitive(root, "gpus");
    if (!cJSON_IsArray(gpus)) {
        fprintf(stderr, "nvml-sim: %s: expected {\"gpus\": [...]}\n", path);
        cJSON_Delete(root);
        return NVML_ERROR_UNKNOWN;
    }
    copy_string(driver_version, sizeof driver_version,
                cJSON_GetObjectItemCaseSensitive(root, "driver_version"), "550.54.15");
    device_count = cJSON_GetArraySize(gpus);
    devices = calloc(device_count ? device_count : 1, sizeof(sim_device_t));
    for (unsigned int i = 0; i < device_count; i++) {
        const cJSON *gpu = cJSON_GetArrayItem(gpus, i);
        sim_device_t *device = &devices[i];
        char fallback_uuid[64];
        snprintf(fallback_uuid, sizeof fallback_uuid, "GPU-00000000-0000-0000-0000-%012u", i);
        copy_string(device->name, sizeof device->name,
                    cJSON_GetObjectItemCaseSensitive(gpu, "name"), "NVIDIA Simulated GPU");
        copy_string(device->uuid, sizeof device->uuid,
                    cJSON_GetObjectItemCaseSensitive(gpu, "uuid"), fallback_uuid);
        copy_string(device->lost_if_exists, sizeof device->lost_if_exists,
                    cJSON_GetObjectItemCaseSensitive(gpu, "lost_if_exists"), "");
        const cJSON *total = cJSON_GetObjectItemCaseSensitive(gpu, "memory_total_mib");
        device->memory_total_mib = cJSON_IsNumber(total) ? total->valuedouble : 16384;
        const cJSON *delay = cJSON_GetObjectItemCaseSensitive(gpu, "delay_ms");
        device->delay_ms = cJSON_IsNumber(delay) ? (unsigned int)delay->valuedouble : 0;
        const char *unknown_call = NULL;
        if (load_call_delays(device->call_delay_us,
                             cJSON_GetObjectItemCaseSensitive(gpu, "call_delay_us"),
                             &unknown_call) != 0) {
            if (unknown_call)
                fprintf(stderr, "nvml-sim: %s: gpus[%u].call_delay_us: the simulator does not"
                                " implement %s\n", path, i, unknown_call);
            else
                fprintf(stderr, "nvml-sim: %s: gpus[%u].call_delay_us must be microseconds, or"
                                " an object of them by NVML function\n", path, i);
            cJSON_Delete(root);
            free_devices();
            return NVML_ERROR_UNKNOWN;
        }
        const cJSON *limit = cJSON_GetObjectItemCaseSensitive(gpu, "power_limit_w");
        device->power_limit_w = cJSON_IsNumber(limit) ? limit->valuedouble : 300;
        for (int f = 0; f < FIELD_COUNT; f++) {
            if (load_series(&device->fields[f],
                            cJSON_GetObjectItemCaseSensitive(gpu, FIELD_KEYS[f])) != 0) {
                fprintf(stderr, "nvml-sim: %s: gpus[%u].%s must be null, a number or a list of"
                                " numbers\n", path, i, FIELD_KEYS[f]);
                cJSON_Delete(root);
                free_devices();
                return NVML_ERROR_UNKNOWN;
            }
        }
    }
    cJSON_Delete(root);
    return NVML_SUCCESS;
}

/* Keep the CPU busy for this long, as a driver call does. */
static void spin_us(unsigned int microseconds) {
    struct timespec now, until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (long)(microseconds % 1000000) * 1000;
    until.tv_sec += microseconds / 1000000 + until.tv_nsec / 1000000000;
    until.tv_nsec %= 1000000000;
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec < until.tv_sec ||
             (now.tv_sec == until.tv_sec && now.tv_nsec < until.tv_nsec));
}

/* The next value of a reading, or an error for a lost GPU or an unsupported field. */
static nvmlReturn_t next_value(nvmlDevice_t device, int field, double *value) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || device < devices || device >= devices + device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->delay_ms) usleep(device->delay_ms * 1000);
    if (device->call_delay_us[field]) spin_us(device->call_delay_us[field]);
    if (device->lost_if_exists[0] && access(device->lost_if_exists, F_OK) == 0)
        return NVML_ERROR_GPU_IS_LOST;
    series_t *series = &device->fields[field];
    if (series->values == NULL) return NVML_ERROR_NOT_SUPPORTED;
    *value = series->values[series->calls++ % series->length];
    return NVML_SUCCESS;
}

static nvmlReturn_t check_device(nvmlDevice_t device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || device < devices || device >= devices + device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->lost_if_exists[0] && access(device->lost_if_exists, F_OK) == 0)
        return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(char *target, unsigned int length, const char *text) {
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(target, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    free_devices();
    nvmlReturn_t result = load_config();
    initialized = result == NVML_SUCCESS;
    return result;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized = 0;
    free_devices();
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy_out(version, length, driver_version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *count = device_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    nvmlReturn_t result = check_device(device);
    return result != NVML_SUCCESS ? result : copy_out(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    nvmlReturn_t result = check_device(device);
    return result != NVML_SUCCESS ? result : copy_out(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    double used_mib;
    nvmlReturn_t result = next_value(device, FIELD_MEMORY, &used_mib);
    if (result != NVML_SUCCESS) return result;
    memory->total = (unsigned long long)(device->memory_total_mib * 1048576.0);
    memory->used = (unsigned long long)(used_mib * 1048576.0);
    memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    double gpu;
    nvmlReturn_t result = next_value(device, FIELD_UTILIZATION, &gpu);
    if (result != NVML_SUCCESS) return result;
    rates->gpu = (unsigned int)gpu;
    rates->memory = (unsigned int)gpu / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power_mw) {
    double watts;
    nvmlReturn_t result = next_value(device, FIELD_POWER, &watts);
    if (result == NVML_SUCCESS) *power_mw = (unsigned int)(watts * 1000.0 + 0.5);
    return result;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit_mw) {
    nvmlReturn_t result = check_device(device);
    if (result == NVML_SUCCESS) *limit_mw = (unsigned int)(device->power_limit_w * 1000.0 + 0.5);
    return result;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *celsius) {
    double value;
    if (sensor != 0) return NVML_ERROR_NOT_SUPPORTED; /* NVML_TEMPERATURE_GPU only */
    nvmlReturn_t result = next_value(device, FIELD_TEMPERATURE, &value);
    if (result == NVML_SUCCESS) *celsius = (unsigned int)value;
    return result;
}

nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *percent) {
    double value;
    nvmlReturn_t result = next_value(device, FIELD_FAN, &value);
    if (result == NVML_SUCCESS) *percent = (unsigned int)value;
    return result;
}
