/*
 * A simulated NVIDIA Management Library: libnvidia-ml.so.1 for machines without a GPU.
 *
 * It implements the NVML calls deepdockd makes, with the C signatures of nvml.h, so that the
 * real pynvml code runs against it. The GPUs come from the JSON file named in
 * $NVML_SIM_CONFIG, read at the first nvmlInit (as in NVML, init and shutdown are counted and
 * thread-safe: a second nvmlInit in the process shares the first's GPUs, and only the last
 * nvmlShutdown lets them go):
 *
 *   {"driver_version": "550.54.15",
 *    "processes_file": "/tmp/processes.json",       (optional: processes a test changes, below)
 *    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
 *              "memory_total_mib": 81559, "power_limit_w": 700,
 *              "memory_reserved_mib": 480,           (the driver's own memory; default 0)
 *              "memory_v2": true,                    (false: no nvmlDeviceGetMemoryInfo_v2)
 *              "memory_used_mib": [1024, 2048], "utilization": [10, 35],
 *              "power_w": [70.5, 120], "temperature_c": [40, 44],
 *              "sm_clock_mhz": [1980, 1755], "mem_clock_mhz": 2619,
 *              "fan_pct": null,                      (null or absent: NOT_SUPPORTED)
 *              "processes": [{"pid": 1234, "used_memory_mib": 1130, "sm": 35,
 *                             "type": "compute"}],   (without "processes_file"; default [])
 *              "lost_if_exists": "/tmp/gpu1.lost",   (GPU_IS_LOST while that file exists)
 *              "delay_ms": 0,                        (each reading sleeps this long: a slow driver)
 *              "call_delay_us": 8}]}                 (each reading spins this long: its real cost)
 *
 * Each reading is a list of values: the n-th call for that device and field returns value
 * n mod length, so readings move over time and a test can compute every value returned.
 * "sm_clock_mhz" and "mem_clock_mhz" are what nvmlDeviceGetClockInfo returns for NVML_CLOCK_SM
 * and NVML_CLOCK_MEM, each its own reading (any other clock: NOT_SUPPORTED).
 *
 * Memory: "memory_used_mib" is what the processes use, "memory_reserved_mib" what the driver
 * keeps for itself. nvmlDeviceGetMemoryInfo_v2 returns them apart (free = total - used -
 * reserved) and wants version nvmlMemory_v2 (else ARGUMENT_VERSION_MISMATCH);
 * nvmlDeviceGetMemoryInfo counts the reserved memory as used, as a real driver does. Both read
 * the one "memory_used_mib" reading: a call of either advances it. "memory_v2": false is an old
 * driver, whose nvmlDeviceGetMemoryInfo_v2 returns FUNCTION_NOT_FOUND.
 *
 * Processes: each is {"pid": 1234, "used_memory_mib": 1130 (null: NVML_VALUE_NOT_AVAILABLE, as
 * on Windows), "sm": 35 (its SM utilization in percent, default 0; its memory utilization is
 * half that), "type": "compute" or "graphics" (default "compute")}. They are a GPU's
 * "processes", or, with "processes_file", that file's {"<gpu index>": [process, ...], ...},
 * which a test may rewrite while NVML is initialised (atomically, by rename): every process
 * call stats it, and reads it again when its inode, mtime or size changed. A missing file means
 * no processes; an unparsable one prints a line on stderr and means none until it changes.
 * nvmlDeviceGetComputeRunningProcesses_v3 and nvmlDeviceGetGraphicsRunningProcesses_v3 list
 * those of their type; nvmlDeviceGetProcessUtilization gives one sample per process, stamped
 * now (CLOCK_REALTIME, microseconds), if that is after lastSeenTimeStamp, else NOT_FOUND.
 *
 * "call_delay_us" is what one reading costs a real driver, to time the daemon against (the
 * benchmarks use the costs measured on an H100): a number for every reading, or an object by
 * NVML function (CALL_NAMES below), e.g. {"nvmlDeviceGetMemoryInfo": 8,
 * "nvmlDeviceGetPowerUsage": 5}; a function the simulator does not implement is refused, so no
 * cost is silently dropped. Every call of the function costs it once: pynvml's two calls to
 * size and then fill a list cost it twice. It spins rather than sleeps: a driver call of a few
 * microseconds is an ioctl that keeps the CPU busy, so its time counts as the caller's CPU time
 * (and Linux's 50 us timer slack would stretch so short a sleep). 0 or absent: no cost, as
 * before.
 *
 * Without $NVML_SIM_CONFIG, nvmlInit fails with DRIVER_NOT_LOADED, as on a host without a
 * driver.
 */
#include <cjson/cJSON.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

enum { NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2 };

#define NVML_VALUE_NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL
#define NVML_NO_INSTANCE 0xFFFFFFFFu /* gpuInstanceId, computeInstanceId: not on a MIG slice */
#define nvmlMemory_v2 0x02000028u    /* NVML_STRUCT_VERSION(Memory, 2) */

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

enum {
    FIELD_MEMORY, FIELD_UTILIZATION, FIELD_POWER, FIELD_TEMPERATURE, FIELD_FAN,
    FIELD_SM_CLOCK, FIELD_MEM_CLOCK, FIELD_COUNT
};
static const char *FIELD_KEYS[FIELD_COUNT] = {
    "memory_used_mib", "utilization", "power_w", "temperature_c", "fan_pct",
    "sm_clock_mhz", "mem_clock_mhz",
};

/* The NVML functions that read the GPU: the keys of "call_delay_us". */
enum {
    CALL_MEMORY, CALL_MEMORY_V2, CALL_UTILIZATION, CALL_POWER, CALL_TEMPERATURE, CALL_FAN,
    CALL_CLOCK, CALL_COMPUTE_PROCESSES, CALL_GRAPHICS_PROCESSES, CALL_PROCESS_UTILIZATION,
    CALL_COUNT
};
static const char *CALL_NAMES[CALL_COUNT] = {
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature", "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetProcessUtilization",
};

typedef struct {
    double *values; /* NULL: the field is not supported */
    int length;
    unsigned long calls;
} series_t;

enum { PROCESS_COMPUTE, PROCESS_GRAPHICS };

typedef struct {
    unsigned int pid;
    unsigned long long used_memory; /* bytes, or NVML_VALUE_NOT_AVAILABLE */
    unsigned int sm;                /* percent */
    int type;                       /* PROCESS_COMPUTE or PROCESS_GRAPHICS */
} sim_process_t;

typedef struct {
    sim_process_t *items;
    unsigned int count;
} process_list_t;

typedef struct sim_device {
    char name[96];
    char uuid[96];
    double memory_total_mib;
    double memory_reserved_mib;
    int memory_v2;
    double power_limit_w;
    char lost_if_exists[512];
    unsigned int delay_ms;
    unsigned int call_delay_us[CALL_COUNT];
    series_t fields[FIELD_COUNT];
    process_list_t processes;      /* its "processes" in the config */
    process_list_t file_processes; /* its list in "processes_file", as last read */
} sim_device_t;

typedef struct sim_device *nvmlDevice_t;

static sim_device_t *devices;
static unsigned int device_count;
static char driver_version[80];
static int initialized;
static unsigned int init_count; /* nvmlInit calls not yet matched by an nvmlShutdown */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* "processes_file" ("": none), and what it was when last read, to read it again on a change. */
static char processes_file[PATH_MAX];
static struct {
    int read;
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    off_t size;
} processes_file_read;

static void free_processes(process_list_t *list) {
    free(list->items);
    list->items = NULL;
    list->count = 0;
}

static void free_devices(void) {
    for (unsigned int i = 0; i < device_count; i++) {
        for (int f = 0; f < FIELD_COUNT; f++) free(devices[i].fields[f].values);
        free_processes(&devices[i].processes);
        free_processes(&devices[i].file_processes);
    }
    free(devices);
    devices = NULL;
    device_count = 0;
    processes_file[0] = '\0';
    processes_file_read.read = 0;
}

static char *read_file(const char *path) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    rewind(file);
    char *text = size < 0 ? NULL : malloc(size + 1);
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
static int load_call_delays(unsigned int delays_us[CALL_COUNT], const cJSON *item,
                            const char **unknown_call) {
    for (int c = 0; c < CALL_COUNT; c++) delays_us[c] = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item) && item->valuedouble >= 0) {
        for (int c = 0; c < CALL_COUNT; c++) delays_us[c] = (unsigned int)item->valuedouble;
        return 0;
    }
    if (!cJSON_IsObject(item)) return -1;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, item) {
        int call = 0;
        while (call < CALL_COUNT && strcmp(entry->string, CALL_NAMES[call]) != 0) call++;
        if (call == CALL_COUNT) {
            *unknown_call = entry->string;
            return -1;
        }
        if (!cJSON_IsNumber(entry) || entry->valuedouble < 0) return -1;
        delays_us[call] = (unsigned int)entry->valuedouble;
    }
    return 0;
}

/* One process, {"pid": ..., "used_memory_mib": ..., "sm": ..., "type": ...}: NULL, or what is
 * wrong with it. */
static const char *load_process(sim_process_t *process, const cJSON *item) {
    if (!cJSON_IsObject(item)) return "expected {\"pid\": ..., \"used_memory_mib\": ...}";
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(item, "pid");
    if (!cJSON_IsNumber(pid) || pid->valuedouble < 0 || pid->valuedouble > UINT_MAX)
        return "\"pid\" must be a number";
    process->pid = (unsigned int)pid->valuedouble;
    const cJSON *memory = cJSON_GetObjectItemCaseSensitive(item, "used_memory_mib");
    if (cJSON_IsNull(memory))
        process->used_memory = NVML_VALUE_NOT_AVAILABLE;
    else if (cJSON_IsNumber(memory) && memory->valuedouble >= 0)
        process->used_memory = (unsigned long long)(memory->valuedouble * 1048576.0);
    else
        return "\"used_memory_mib\" must be a number of MiB, or null (not available)";
    const cJSON *sm = cJSON_GetObjectItemCaseSensitive(item, "sm");
    if (sm != NULL && !(cJSON_IsNumber(sm) && sm->valuedouble >= 0 && sm->valuedouble <= 100))
        return "\"sm\" must be a percentage, 0 to 100";
    process->sm = sm ? (unsigned int)sm->valuedouble : 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(item, "type");
    if (type == NULL || (cJSON_IsString(type) && strcmp(type->valuestring, "compute") == 0))
        process->type = PROCESS_COMPUTE;
    else if (cJSON_IsString(type) && strcmp(type->valuestring, "graphics") == 0)
        process->type = PROCESS_GRAPHICS;
    else
        return "\"type\" must be \"compute\" or \"graphics\"";
    return NULL;
}

/* A list of processes (null or absent: none) into *list, or what is wrong with it in problem. */
static int load_processes(process_list_t *list, const cJSON *item, char *problem, size_t size) {
    list->items = NULL;
    list->count = 0;
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsArray(item)) {
        snprintf(problem, size, "must be a list of processes");
        return -1;
    }
    int count = cJSON_GetArraySize(item);
    list->items = calloc(count ? count : 1, sizeof(sim_process_t));
    for (int i = 0; i < count; i++) {
        const char *wrong = load_process(&list->items[i], cJSON_GetArrayItem(item, i));
        if (wrong) {
            snprintf(problem, size, "[%d]: %s", i, wrong);
            free_processes(list);
            return -1;
        }
    }
    list->count = (unsigned int)count;
    return 0;
}

/* The lists of "processes_file", {"<gpu index>": [process, ...], ...}, into lists (one per
 * GPU), or what is wrong with it in problem. */
static int parse_processes_file(process_list_t *lists, const char *text, char *problem,
                                size_t size) {
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) {
        snprintf(problem, size, "expected {\"<gpu index>\": [processes], ...}");
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) {
        char *end;
        unsigned long index = strtoul(entry->string, &end, 10);
        if (entry->string[0] < '0' || entry->string[0] > '9' || *end != '\0' ||
            index >= device_count) {
            snprintf(problem, size, "\"%s\" is not the index of a GPU (there are %u)",
                     entry->string, device_count);
            cJSON_Delete(root);
            return -1;
        }
        char wrong[256];
        free_processes(&lists[index]); /* a key given twice: the last one */
        if (load_processes(&lists[index], entry, wrong, sizeof wrong) != 0) {
            snprintf(problem, size, "\"%s\"%s%s", entry->string, wrong[0] == '[' ? "" : " ",
                     wrong);
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}

static void forget_processes_file(void) {
    for (unsigned int i = 0; i < device_count; i++) free_processes(&devices[i].file_processes);
}

/* Read "processes_file" again if it changed (another file, mtime or size) since the last read. */
static void refresh_processes_file(void) {
    struct stat status;
    if (stat(processes_file, &status) != 0) { /* no file: no processes */
        forget_processes_file();
        processes_file_read.read = 0;
        return;
    }
    if (processes_file_read.read && processes_file_read.dev == status.st_dev &&
        processes_file_read.ino == status.st_ino && processes_file_read.size == status.st_size &&
        processes_file_read.mtime.tv_sec == status.st_mtim.tv_sec &&
        processes_file_read.mtime.tv_nsec == status.st_mtim.tv_nsec)
        return;
    forget_processes_file();
    char *text = read_file(processes_file);
    if (text == NULL) { /* gone since the stat: as if missing, and read it when it is back */
        processes_file_read.read = 0;
        return;
    }
    processes_file_read.read = 1;
    processes_file_read.dev = status.st_dev;
    processes_file_read.ino = status.st_ino;
    processes_file_read.mtime = status.st_mtim;
    processes_file_read.size = status.st_size;
    process_list_t *lists = calloc(device_count ? device_count : 1, sizeof(process_list_t));
    char problem[384];
    if (parse_processes_file(lists, text, problem, sizeof problem) == 0) {
        for (unsigned int i = 0; i < device_count; i++) devices[i].file_processes = lists[i];
    } else {
        fprintf(stderr, "nvml-sim: processes_file %s: %s; no processes until it changes\n",
                processes_file, problem);
        for (unsigned int i = 0; i < device_count; i++) free_processes(&lists[i]);
    }
    free(lists);
    free(text);
}

/* The processes on a device now. */
static const process_list_t *processes_of(nvmlDevice_t device) {
    if (processes_file[0] == '\0') return &device->processes;
    refresh_processes_file();
    return &device->file_processes;
}

/* The keys of a GPU that are not readings: 0, or -1 once the problem is on stderr. */
static int load_gpu_settings(sim_device_t *device, const cJSON *gpu, const char *path,
                             unsigned int i) {
    const cJSON *reserved = cJSON_GetObjectItemCaseSensitive(gpu, "memory_reserved_mib");
    if (reserved != NULL && !(cJSON_IsNumber(reserved) && reserved->valuedouble >= 0)) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].memory_reserved_mib must be a number of MiB\n",
                path, i);
        return -1;
    }
    device->memory_reserved_mib = reserved ? reserved->valuedouble : 0;
    const cJSON *memory_v2 = cJSON_GetObjectItemCaseSensitive(gpu, "memory_v2");
    if (memory_v2 != NULL && !cJSON_IsBool(memory_v2)) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].memory_v2 must be true or false\n", path, i);
        return -1;
    }
    device->memory_v2 = memory_v2 == NULL || cJSON_IsTrue(memory_v2);
    char problem[256];
    if (load_processes(&device->processes, cJSON_GetObjectItemCaseSensitive(gpu, "processes"),
                       problem, sizeof problem) != 0) {
        fprintf(stderr, "nvml-sim: %s: gpus[%u].processes%s%s\n", path, i,
                problem[0] == '[' ? "" : " ", problem);
        return -1;
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
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(root, "processes_file");
    if ((file != NULL && !cJSON_IsNull(file) && !cJSON_IsString(file)) ||
        (cJSON_IsString(file) && strlen(file->valuestring) >= sizeof processes_file)) {
        fprintf(stderr, "nvml-sim: %s: processes_file must be the path of a JSON file\n", path);
        cJSON_Delete(root);
        return NVML_ERROR_UNKNOWN;
    }
    copy_string(processes_file, sizeof processes_file, file, "");
    processes_file_read.read = 0;
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
        if (load_gpu_settings(device, gpu, path, i) != 0) {
            cJSON_Delete(root);
            free_devices();
            return NVML_ERROR_UNKNOWN;
        }
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

static nvmlReturn_t check_handle(nvmlDevice_t device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || device < devices || device >= devices + device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

static int is_lost(nvmlDevice_t device) {
    return device->lost_if_exists[0] && access(device->lost_if_exists, F_OK) == 0;
}

static nvmlReturn_t check_device(nvmlDevice_t device) {
    nvmlReturn_t result = check_handle(device);
    if (result != NVML_SUCCESS) return result;
    return is_lost(device) ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

/* The start of every reading: the handle checked, the device's delay and the call's cost
 * spent, then a lost GPU's error. */
static nvmlReturn_t begin_reading(nvmlDevice_t device, int call) {
    nvmlReturn_t result = check_handle(device);
    if (result != NVML_SUCCESS) return result;
    if (device->delay_ms) usleep(device->delay_ms * 1000);
    if (device->call_delay_us[call]) spin_us(device->call_delay_us[call]);
    return is_lost(device) ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

/* The next value of a reading by an NVML call, or an error for a lost GPU or an unsupported
 * field. */
static nvmlReturn_t next_value(nvmlDevice_t device, int field, int call, double *value) {
    nvmlReturn_t result = begin_reading(device, call);
    if (result != NVML_SUCCESS) return result;
    series_t *series = &device->fields[field];
    if (series->values == NULL) return NVML_ERROR_NOT_SUPPORTED;
    *value = series->values[series->calls++ % series->length];
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(char *target, unsigned int length, const char *text) {
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(target, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t result = NVML_SUCCESS;
    pthread_mutex_lock(&init_lock);
    if (init_count == 0) {
        free_devices();
        result = load_config();
        initialized = result == NVML_SUCCESS;
    }
    if (result == NVML_SUCCESS) init_count++;
    pthread_mutex_unlock(&init_lock);
    return result;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&init_lock);
    nvmlReturn_t result = NVML_SUCCESS;
    if (init_count == 0) {
        result = NVML_ERROR_UNINITIALIZED;
    } else if (--init_count == 0) {
        initialized = 0;
        free_devices();
    }
    pthread_mutex_unlock(&init_lock);
    return result;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
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

/* The next memory reading in bytes: the total, the driver's reserved and the processes' used. */
static nvmlReturn_t read_memory(nvmlDevice_t device, int call, unsigned long long *total,
                                unsigned long long *reserved, unsigned long long *used) {
    double used_mib;
    nvmlReturn_t result = next_value(device, FIELD_MEMORY, call, &used_mib);
    if (result != NVML_SUCCESS) return result;
    *total = (unsigned long long)(device->memory_total_mib * 1048576.0);
    *reserved = (unsigned long long)(device->memory_reserved_mib * 1048576.0);
    *used = (unsigned long long)(used_mib * 1048576.0);
    return NVML_SUCCESS;
}

/* As a real driver does, the memory the driver reserves counts as used. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    unsigned long long total, reserved, used;
    nvmlReturn_t result = read_memory(device, CALL_MEMORY, &total, &reserved, &used);
    if (result != NVML_SUCCESS) return result;
    memory->total = total;
    memory->used = used + reserved;
    memory->free = total > memory->used ? total - memory->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    nvmlReturn_t result = check_handle(device);
    if (result != NVML_SUCCESS) return result;
    if (!device->memory_v2) return NVML_ERROR_FUNCTION_NOT_FOUND; /* an old driver */
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, reserved, used;
    result = read_memory(device, CALL_MEMORY_V2, &total, &reserved, &used);
    if (result != NVML_SUCCESS) return result;
    memory->total = total;
    memory->reserved = reserved;
    memory->used = used;
    memory->free = total > used + reserved ? total - used - reserved : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    double gpu;
    nvmlReturn_t result = next_value(device, FIELD_UTILIZATION, CALL_UTILIZATION, &gpu);
    if (result != NVML_SUCCESS) return result;
    rates->gpu = (unsigned int)gpu;
    rates->memory = (unsigned int)gpu / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power_mw) {
    double watts;
    nvmlReturn_t result = next_value(device, FIELD_POWER, CALL_POWER, &watts);
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
    nvmlReturn_t result = next_value(device, FIELD_TEMPERATURE, CALL_TEMPERATURE, &value);
    if (result == NVML_SUCCESS) *celsius = (unsigned int)value;
    return result;
}

nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *percent) {
    double value;
    nvmlReturn_t result = next_value(device, FIELD_FAN, CALL_FAN, &value);
    if (result == NVML_SUCCESS) *percent = (unsigned int)value;
    return result;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock_mhz) {
    double value;
    int field = type == NVML_CLOCK_SM ? FIELD_SM_CLOCK
              : type == NVML_CLOCK_MEM ? FIELD_MEM_CLOCK : -1;
    if (field < 0) return NVML_ERROR_NOT_SUPPORTED; /* NVML_CLOCK_SM and NVML_CLOCK_MEM only */
    nvmlReturn_t result = next_value(device, field, CALL_CLOCK, &value);
    if (result == NVML_SUCCESS) *clock_mhz = (unsigned int)value;
    return result;
}

/* The running processes of one type, by nvml.h's protocol: a count too small for them gets
 * the count needed and INSUFFICIENT_SIZE (pynvml asks with 0, then with room). */
static nvmlReturn_t running_processes(nvmlDevice_t device, int call, int type,
                                      unsigned int *count, nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = begin_reading(device, call);
    if (result != NVML_SUCCESS) return result;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const process_list_t *list = processes_of(device);
    unsigned int found = 0;
    for (unsigned int i = 0; i < list->count; i++) found += list->items[i].type == type;
    if (*count < found) {
        *count = found;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (found > 0 && infos == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (unsigned int i = 0; i < list->count; i++) {
        const sim_process_t *process = &list->items[i];
        if (process->type != type) continue;
        infos[n].pid = process->pid;
        infos[n].usedGpuMemory = process->used_memory;
        infos[n].gpuInstanceId = NVML_NO_INSTANCE;
        infos[n].computeInstanceId = NVML_NO_INSTANCE;
        n++;
    }
    *count = found;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                     unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos) {
    return running_processes(device, CALL_COMPUTE_PROCESSES, PROCESS_COMPUTE, infoCount, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device,
                                                      unsigned int *infoCount,
                                                      nvmlProcessInfo_t *infos) {
    return running_processes(device, CALL_GRAPHICS_PROCESSES, PROCESS_GRAPHICS, infoCount,
                             infos);
}

static unsigned long long realtime_us(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000;
}

/* One sample per process, of both types, stamped now: none (NOT_FOUND) unless now is after
 * lastSeenTimeStamp. No array, or one too small: the count needed and INSUFFICIENT_SIZE. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp) {
    nvmlReturn_t result = begin_reading(device, CALL_PROCESS_UTILIZATION);
    if (result != NVML_SUCCESS) return result;
    if (processSamplesCount == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    const process_list_t *list = processes_of(device);
    unsigned long long now = realtime_us();
    unsigned int found = now > lastSeenTimeStamp ? list->count : 0;
    if (found == 0) return NVML_ERROR_NOT_FOUND;
    if (utilization == NULL || *processSamplesCount < found) {
        *processSamplesCount = found;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < found; i++) {
        utilization[i].pid = list->items[i].pid;
        utilization[i].timeStamp = now;
        utilization[i].smUtil = list->items[i].sm;
        utilization[i].memUtil = list->items[i].sm / 2;
        utilization[i].encUtil = 0;
        utilization[i].decUtil = 0;
    }
    *processSamplesCount = found;
    return NVML_SUCCESS;
}
